"""What each layer learns: receptive fields, the patches that excite each channel, synthesised inputs, evolution, and
what each layer detects, measured by network dissection."""

import streamlit as st

from cnnviz.ui import dissection, links, state, views

st.title("What each layer learns")
st.markdown("Each layer of a CNN combines the maps of the one before, so one cell of a later layer sees a bigger part "
            "of the image. This page measures that on **your** model and shows what its channels respond to: the "
            "test images that excite them most, and inputs made to excite them. What they detect is for you to "
            "judge from the pictures.")
sm = state.current()
model, info = sm.model, sm.info
presenter = st.session_state.get("presenter", False)
test = views.test_split(sm, or_brought=True)
if test is None:
    st.stop()

st.header("1 · How much of the image each layer sees", divider="gray", anchor=False)
fields = views.fields(sm, maps=True)
c1, c2 = st.columns([3, 2])
with c1:
    views.receptive_fields(sm, test)
c2.dataframe([{"layer": f.name, "window (pixels)": f"{f.size}×{f.size}", "step between cells": f.jump,
               "map size": f"{f.out_size}×{f.out_size}"} for f in fields], hide_index=True)

st.header("2 · What excites each channel", divider="gray", anchor=False)
map_layers = [f.name for f in views.fields(sm, ("conv", "activation", "pool"))]
if not map_layers:
    st.info("The receptive fields of this model cannot be read from its structure, so its patches cannot be cut.")
    st.stop()
links.restore(links.HIERARCHY)
links.valid("hier_layer", map_layers)
layer = st.select_slider("Layer", map_layers, key="hier_layer")
links.publish(["hier_layer"])
left, right = st.columns(2)
with left:
    st.subheader("The test images it fires on most", anchor=False)
    views.top_patches(sm, test, layer, rows=8 if presenter else 12)
with right:
    st.subheader("The input it likes best", anchor=False)
    views.maximized(sm, layer, limit=12)

st.header("3 · All layers side by side", divider="gray", anchor=False)
views.overview(sm, test)

st.header("4 · How the first filters grew during training", divider="gray", anchor=False)
views.evolution(sm, key="hier_frame")

st.header("5 · What each layer detects, measured", divider="gray", anchor=False)
dissection.section(sm)
