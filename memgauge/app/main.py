"""The dashboard's entry script: `streamlit run memgauge/app/main.py` (started by
`memgauge dashboard`, which passes the store in $MEMGAUGE_STORE).  One `st.navigation` router;
each page is a short script under views/ (not pages/: on a direct URL such as /explore,
Streamlit would run a pages/ folder's script as an old-style page, bypassing this router)."""

from __future__ import annotations

import streamlit as st

from memgauge.app import common as C
from memgauge.results.store import redact

st.set_page_config(page_title="memgauge", page_icon=":bar_chart:", layout="wide")
C.refresh_marker()

OVERVIEW = st.Page("views/overview.py", title="Overview", url_path="overview")


def start() -> None:
    """The root URL opens the Overview at /overview.  (A default page is served at "/" only:
    its own path, bookmarked or linked, would say "Page not found".)"""
    st.switch_page(OVERVIEW)


PAGES = {
    "Results": [
        st.Page(start, title="Overview", default=True, visibility="hidden"),
        OVERVIEW,
        st.Page("views/explore.py", title="Explore", url_path="explore"),
        st.Page("views/breakdown.py", title="Breakdown", url_path="breakdown"),
        st.Page("views/scaling.py", title="Scaling", url_path="scaling"),
        st.Page("views/combinations.py", title="Combinations", url_path="combinations"),
    ],
    "Plan": [
        st.Page("views/estimate.py", title="Estimate", url_path="estimate"),
        st.Page("views/plan.py", title="Plan", url_path="plan"),
    ],
    "History": [
        st.Page("views/compare.py", title="Compare", url_path="compare"),
        st.Page("views/trends.py", title="Trends", url_path="trends"),
        st.Page("views/timeline.py", title="Timeline", url_path="timeline"),
    ],
}

page = st.navigation(PAGES)
st.sidebar.caption(f"store: `{redact(C.store_url())}`  \nbytes are 1024-based: 1 GiB = 1024³ B")
page.run()
