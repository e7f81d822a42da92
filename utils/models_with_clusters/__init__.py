"""Stage `models_with_clusters/`: vocabulary, session data, user profiles, clustering, the
per-cluster models and the in-session predictions. Imports `utils.core` and `utils.baseline`."""
