"""cnnviz: the Streamlit entry point. `streamlit run app.py` (or `make run`)."""

import streamlit as st

from cnnviz.ui import jobs, links, widgets

jobs.use_server_threads()
st.set_page_config(page_title="cnnviz: see inside a CNN", page_icon=":material/visibility:", layout="wide")

pages = {
    "": [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)],
    "Train": [st.Page("pages/train.py", title="Train a CNN", icon=":material/model_training:")],
    "Explore": [st.Page("pages/explore.py", title="Explore an image", icon=":material/image_search:")],
    "Learn": [
        st.Page("pages/convolution.py", title="Convolution step by step", icon=":material/grid_on:"),
        st.Page("pages/hierarchy.py", title="What each layer learns", icon=":material/stacks:"),
        st.Page("pages/lessons.py", title="Lessons", icon=":material/school:"),
    ],
}
links.keep()
nav = st.navigation(pages)
widgets.sidebar()
nav.run()
