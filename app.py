"""cnnviz: the Streamlit entry point. `streamlit run app.py` (or `make run`)."""

import logging
import os

# Before torch loads: idle OpenMP threads sleep instead of spinning, so many sessions sharing the cores do not
# slow each other down. `cnnviz app` sets it for its whole process (cnnviz.ui.launch); this covers a plain
# `streamlit run app.py`. Training processes start without it (cnnviz.ui.jobs).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st  # noqa: E402
from streamlit.errors import FragmentHandledException  # noqa: E402

from cnnviz.ui import jobs, links, widgets  # noqa: E402

jobs.use_server_threads()
st.set_page_config(page_title="cnnviz: see inside a CNN", page_icon=":material/visibility:", layout="wide")
st.html(widgets.QUIET_STATUS_CSS)

pages = {
    "": [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)],
    "Train": [st.Page("pages/train.py", title="Train a CNN", icon=":material/model_training:")],
    "Explore": [
        st.Page("pages/explore.py", title="Explore an image", icon=":material/image_search:"),
        st.Page("pages/camera.py", title="Live camera", icon=":material/videocam:"),
    ],
    "Learn": [
        st.Page("pages/convolution.py", title="Convolution step by step", icon=":material/grid_on:"),
        st.Page("pages/hierarchy.py", title="What each layer learns", icon=":material/stacks:"),
        st.Page("pages/lessons.py", title="Lessons", icon=":material/school:"),
        st.Page("pages/architectures.py", title="Backpropagation and architectures", icon=":material/account_tree:"),
    ],
}
links.keep()
nav = st.navigation(pages)
widgets.sidebar()
try:
    nav.run()
except FragmentHandledException:
    raise  # a fragment's error, already shown by Streamlit in the fragment
except Exception:  # st.stop, st.rerun and st.switch_page raise BaseExceptions (ScriptControlException): they pass
    # Served (.streamlit/config.toml): the student gets our words, the server's log the traceback. Developing
    # (`make dev`) and testing: Streamlit's own report, with the details.
    if st.get_option("client.showErrorDetails") != "none":
        raise
    logging.getLogger("cnnviz.app").exception("the page %r failed", nav.title)
    st.error("Something went wrong on this page, sorry. Your model and your settings are kept: try again, or "
             "open another page. The details are in the server's log for your teacher.", icon=":material/error:")
