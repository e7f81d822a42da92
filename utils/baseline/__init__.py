"""Stage `baseline/`: sessions summarized per user, the split, baselines, features, the networks
and LightGBM, the distributional models and the experiment that scores them. Imports
`utils.core` only."""
