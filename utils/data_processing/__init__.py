"""Stage `data_processing/`: the raw plays file read, unique tracks, their metadata (Last.fm
crawl or offline), per-user denormalized files, on the local engine and on Spark. Imports
`utils.core` only."""
