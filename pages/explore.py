"""Explore: one image through the current model — preprocessing, prediction, filters, feature maps, pooling, Grad-CAM."""

import streamlit as st

from cnnviz import explain, figures, gradcam, images, pictures, probe
from cnnviz.text import md, mpl
from cnnviz.ui import cache, links, state, views, widgets
from cnnviz.ui.cache import figure_png

st.title("Explore an image")
sm = state.current()
model, info = sm.model, sm.info
st.caption(f"Looking inside {widgets.model_summary(sm)}")
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM", "saliency": "Saliency"}
SHARED = links.EXPLORE
links.restore(SHARED)
links.valid("explore_resize", list(images.RESIZE_POLICIES))
links.valid("explore_invert", ["auto", "on", "off"])

# --- pick -------------------------------------------------------------------------------------------------------
# The image-source pills do not wrap: at 1024 px (a projector, sidebar open) a third of the page clips "Camera".
# Each model starts from the resize its data was made with (ImageNet models: the centre crop, as torchvision's own
# transforms do); a link's value holds for the model the link opens with.
if "_explore_resize_for" in st.session_state and st.session_state._explore_resize_for != sm.model_id:
    st.session_state.explore_resize = info.resize
st.session_state._explore_resize_for = sm.model_id
st.session_state.setdefault("explore_resize", info.resize)
pick_col, prep_col = st.columns([1, 1], gap="medium")
with pick_col:
    picked = widgets.image_picker(info, key="explore")
    with st.expander("Preprocessing options", icon=":material/settings:"):
        crop_words = (f"shorter side to {info.resize_to}, then the middle {info.size}×{info.size}" if info.resize_to
                      else "cut the middle square")
        resize = st.radio("Resize", images.RESIZE_POLICIES, horizontal=True, key="explore_resize",
                          captions=["stretch to a square", crop_words, "add a border"])
        invert_choice = st.radio("Invert light and dark", ["auto", "on", "off"], horizontal=True,
                                 key="explore_invert", help="MNIST-like datasets are light strokes on black; "
                                                            "'auto' inverts dark-on-light pictures to match.")
if picked is None:
    st.info("Choose an image on the left to look inside the network.", icon=":material/arrow_back:")
    st.stop()
invert = {"auto": None, "on": True, "off": False}[invert_choice]
ins = cache.inspection(model, sm.model_id, info, picked.data, resize, invert)
key = (sm.model_id, picked.key, resize, invert_choice)  # everything a view's figure depends on, but its own controls

with prep_col:
    st.subheader("What the network gets", anchor=False)
    steps = ins.prepared.steps
    # Each step as an image of its own, captioned, at its own size (Streamlit would re-encode a wider one, blurred):
    # no figure to draw.
    st.image(list(cache.web_images(key + ("steps",), lambda: [s.image for s in steps])),
             caption=[s.title for s in steps], width="content", output_format="PNG")
    st.caption(explain.preprocessing([s.title.split(" (")[0] for s in steps], info.size, info.channels))
    st.subheader("Prediction", anchor=False)
    top = ins.top(info, k=5)
    st.image(figure_png(key + ("top5",), lambda: figures.topk_bars(ins.probs, info.class_names, k=5)),
             width="stretch")
    st.markdown(explain.prediction(top, info.class_names))

st.caption(f"Image: {md(picked.label)}.")
# One view at a time: a class of 30 opening this page at once costs the server one view each, not four.
VIEWS = ["Filters", "Feature maps", "Pooling", "Grad-CAM"]
links.valid("explore_view", VIEWS)
st.session_state.setdefault("explore_view", "Feature maps")
view = st.segmented_control("View", VIEWS, key="explore_view", label_visibility="collapsed") or "Feature maps"
PAGE = 64  # channels or filters drawn at once: a 512-channel layer is paged, not drawn in one 512-tile figure


def what(text: str) -> None:
    with st.expander("What am I seeing?", icon=":material/help:", expanded=True):
        st.markdown(text)


def show(png: bytes, name: str, dl_key: str) -> None:
    st.image(png, width="stretch")
    st.download_button("Download PNG", png, file_name=f"{name}.png", mime="image/png", key=dl_key,
                       icon=":material/download:")


# --- filters ----------------------------------------------------------------------------------------------------
def page_of(n: int, key: str) -> list[int]:
    """The numbers on the chosen page of ``n`` channels (all of them when they fit on one page)."""
    if n <= PAGE:
        return list(range(n))
    pages = [f"{i} to {min(i + PAGE, n) - 1}" for i in range(0, n, PAGE)]
    links.valid(key, pages)
    chosen = st.select_slider(f"Which {PAGE} of the {n}", pages, key=key)
    start = pages.index(chosen) * PAGE
    return list(range(start, min(start + PAGE, n)))


if view == "Filters":
    conv_names = probe.layer_names(model, "conv")
    links.valid("explore_filter_layer", conv_names)
    layer = st.selectbox("Conv layer", conv_names, key="explore_filter_layer")
    w = probe.get_module(model, layer).weight.detach()  # (O, I / groups, kh, kw); only the layer shown is read
    first = layer == conv_names[0]
    what(explain.filters(layer, tuple(w.shape), first))
    c1, c2 = st.columns([2, 1])
    with c1:
        shown = page_of(w.shape[0], f"explore_filter_page_{layer}")
        show(figure_png((sm.model_id, "filters", layer, shown[0]), lambda: figures.filter_grid(
            w[shown], channels=shown, title=f"{layer}: {w.shape[0]} filters of {w.shape[2]}×{w.shape[3]}")),
             f"filters-{layer}", "dl_filters")
    with c2:
        links.valid("explore_filter_index", list(range(w.shape[0])))
        f = st.number_input("Enlarge filter #", 0, w.shape[0] - 1, key="explore_filter_index")
        st.image(figure_png((sm.model_id, "filter", layer, f), lambda: figures.filter_image(w[f])),
                 width="stretch")
        st.caption(f"Filter #{f} of {layer}, one panel per input channel, with its weights written in. Red weights "
                   "add where the input is bright, blue ones subtract.")

# --- feature maps -----------------------------------------------------------------------------------------------
elif view == "Feature maps":
    map_layers = ins.map_layers()
    links.valid("explore_map_layer", map_layers)
    layer = st.select_slider("Layer (slide to walk through the network in order)", map_layers,
                             key="explore_map_layer")
    rec = ins.records[layer]
    maps = rec.output[0]
    n = maps.shape[0]
    what(explain.feature_maps(rec, views.windows(sm).get(layer), info.size))
    links.valid("explore_channel", list(range(n)))
    if n > PAGE and st.session_state.get("_explore_channel_for") not in (None, layer):
        # A big layer opens on its busiest channel: in a 512-channel layer most maps are dark for any one image.
        st.session_state.explore_channel = int(probe.busiest(maps)[0])
    st.session_state._explore_channel_for = layer
    channel = st.number_input("Look closer at channel #", 0, n - 1, key="explore_channel")
    c1, c2 = st.columns([2, 1])
    with c1:
        if n > PAGE:
            order = st.radio("Order", ["most active first", "channel number"], horizontal=True,
                             key="explore_map_order")
            ranked = probe.busiest(maps).tolist() if order == "most active first" else list(range(n))
            shown = [ranked[i] for i in page_of(n, f"explore_map_page_{layer}")]
        else:
            shown = list(range(n))
        show(figure_png(key + ("maps", layer, channel, tuple(shown)), lambda: pictures.feature_grid(
            maps[shown], channels=shown, of=n, title=f"{layer}: {explain.shape_words(tuple(maps.shape))}",
            highlight=channel if channel in shown else None)), f"feature-maps-{layer}", "dl_maps")
    with c2:
        st.image(list(cache.web_images(key + ("beside", layer, channel),
                                       lambda: [ins.prepared.display, figures.map_image(maps[channel])])),
                 caption=["What the network sees", f"{layer} #{channel}"], width="content", output_format="PNG")
        stats = probe.channel_stats(maps)
        st.caption(f"Channel #{channel}: mean {stats['mean'][channel]:.2f}, max {stats['max'][channel]:.2f}, "
                   f"active (> 0) on {stats['frac_active'][channel]:.0%} of its cells.")
    st.image(figure_png(key + ("bars", layer, channel), lambda: figures.channel_bars(
        stats["mean"], stats["max"], highlight=channel, title=f"Activation of each of the {n} channels of {layer}")),
        width="stretch")
    # Inside a residual or Inception block: the block's parts side by side (x, F(x), x + F(x); or its branches).
    blocks = probe.graph_blocks(ins.records)
    block = next((b for b in blocks if layer == b or layer.startswith(b + ".")), None)
    if block is not None:
        if blocks[block] == "residual":
            rv = probe.residual(ins.records, block)
            st.subheader(f"Inside {block}: x, F(x) and x + F(x)", anchor=False)
            what(explain.residual(rv))
            panels = [("x (what the shortcut carries)", rv.shortcut[0]), ("F(x) (the two convolutions)", rv.fx[0]),
                      ("x + F(x) (the sum)", rv.sum[0])]
        else:
            bv = probe.branches(ins.records, block)
            st.subheader(f"Inside {block}: its branches side by side", anchor=False)
            what(explain.branches(bv))
            panels = [(path.rpartition(".")[2], out[0]) for path, out in bv.branches.items()]
        for col, (title, maps_) in zip(st.columns(len(panels)), panels):
            few = list(range(min(16, maps_.shape[0])))
            with col:
                st.image(figure_png(key + ("block", block, title), lambda m=maps_, t=title, f=few: pictures.feature_grid(
                    m[f], channels=f, of=m.shape[0], title=f"{t}: {explain.shape_words(tuple(m.shape))}")),
                    width="stretch")

# --- pooling ----------------------------------------------------------------------------------------------------
elif view == "Pooling":
    pairs = {p.name: p for p in probe.pooling_pairs(ins.records)}
    if not pairs:
        st.info("This model has no pooling layers.")
    else:
        links.valid("explore_pool_layer", list(pairs))
        name = st.selectbox("Pooling layer", list(pairs), key="explore_pool_layer")
        pair = pairs[name]
        what(explain.pooling(pair))
        links.valid("explore_pool_channel", list(range(pair.input.shape[0])))
        ch = st.number_input("Channel #", 0, pair.input.shape[0] - 1, key="explore_pool_channel")
        show(figure_png(key + ("pool", name, ch), lambda: figures.pooling_pair(pair, ch)), f"pooling-{name}",
             "dl_pool")

# --- Grad-CAM ---------------------------------------------------------------------------------------------------
else:
    cam_layers = ins.map_layers()
    links.valid("explore_cam_layer", cam_layers)
    links.valid("explore_cam_method", list(gradcam.METHODS))
    links.valid("explore_cam_class", [-1, *range(info.num_classes)])
    st.session_state.setdefault("explore_cam_layer", gradcam.default_layer(model))
    # The help speaks of the layer chosen now (its widget comes after this one; its value is already set).
    pooled = gradcam.global_average_pooled(model, st.session_state.explore_cam_layer)
    hires = explain.hirescam_help(st.session_state.explore_cam_layer, pooled)
    c = st.columns(4)
    method = c[0].radio("Method", list(gradcam.METHODS), key="explore_cam_method", format_func=METHOD_NAMES.get,
                        help=f"Grad-CAM is the classic. {hires} Saliency looks at single input pixels.")
    layer = c[1].selectbox("Layer", cam_layers, key="explore_cam_layer", disabled=method == "saliency")
    predicted = int(ins.probs.argmax())
    choice = c[2].selectbox("Class", [-1, *range(info.num_classes)], key="explore_cam_class",
                            format_func=lambda i: "the predicted class" if i < 0 else info.class_names[i])
    target = predicted if choice < 0 else choice
    st.session_state.setdefault("explore_cam_alpha", 0.5)
    alpha = c[3].slider("Opacity", 0.0, 1.0, step=0.05, key="explore_cam_alpha")
    res = cache.cam(model, sm.model_id, ins.x, picked.key + resize + invert_choice, layer, target, method)
    what(explain.gradcam(method, layer, info.class_names[target], res.score, pooled))
    c1, c2 = st.columns([3, 2])
    with c1:
        show(figure_png(key + ("cam", layer, target, method, alpha), lambda: figures.overlay(
            ins.prepared.display, res.heatmap, alpha=alpha, title=f"Why '{mpl(info.class_names[target])}'?")),
             "gradcam", "dl_cam")
    with c2:
        st.markdown("**Why one class and not another?**")
        others = [i for i in range(info.num_classes) if i != target]
        runner = int(ins.probs.argsort(descending=True)[1]) if target == predicted else predicted
        other = st.selectbox("Compare with", others, index=others.index(runner), key=f"explore_cam_other_{target}",
                             format_func=lambda i: info.class_names[i])
        res_b = cache.cam(model, sm.model_id, ins.x, picked.key + resize + invert_choice, layer, other, method)
        cols = st.columns(2)
        for col, r, cls in ((cols[0], res, target), (cols[1], res_b, other)):
            col.image(figures.overlay_image(ins.prepared.display, r.heatmap, alpha).resize((160, 160), 0),
                      width="stretch", caption=f"'{md(info.class_names[cls])}' (score {r.score:.2f})")
        st.caption("The score is the network's raw vote for a class before the softmax: the highest score wins. "
                   "Each heatmap is stretched to its own maximum, so the scores, not the colours, say which class "
                   "had more evidence; the heatmaps say where each class found it.")

links.publish(list(SHARED))
