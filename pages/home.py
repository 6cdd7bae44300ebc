"""Home: what cnnviz is, the journey, and this session's model."""

import streamlit as st

from cnnviz.text import md
from cnnviz.ui import state, widgets

st.title("cnnviz: see what a convolutional network sees")
st.markdown(
    "A **convolutional neural network** (CNN) learns to recognise pictures by stacking layers of small filters: "
    "each layer combines the maps of the one before, so a later layer sees a bigger part of the image. "
    "Here you can **train** one yourself and watch it learn, then **explore** it on any image — its filters, "
    "feature maps, pooling and where it looks — and **learn** how each piece works, step by step."
)

cols = st.columns(3)
with cols[0].container(border=True):
    st.subheader("1 · Train", anchor=False)
    st.write("Pick a dataset and an architecture, press Train and watch the curves and filters change.")
    st.page_link("pages/train.py", label="Train a CNN", icon=":material/model_training:")
with cols[1].container(border=True):
    st.subheader("2 · Explore", anchor=False)
    st.write("Give the network an image and look inside: filters, feature maps, pooling and Grad-CAM.")
    st.page_link("pages/explore.py", label="Explore an image", icon=":material/image_search:")
with cols[2].container(border=True):
    st.subheader("3 · Learn", anchor=False)
    st.write("See one convolution computed by hand, what each layer responds to, and guided lessons.")
    st.page_link("pages/lessons.py", label="Start a lesson", icon=":material/school:")

st.subheader("Your model", anchor=False)
sm = state.current()
st.markdown(widgets.model_summary(sm))
if sm.model_id.startswith("shipped-"):
    st.caption("No model of your own yet: this is the small model that ships with cnnviz, trained on the built-in "
               "shapes dataset, so every page works right away. Train your own on the Train page.")
else:
    st.caption(f"Source: {md(sm.source)}.")
