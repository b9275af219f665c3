"""The Streamlit dashboard (`memgauge dashboard`): a thin router over `memgauge.results` queries
and figures.  Importing this package does not import Streamlit."""
