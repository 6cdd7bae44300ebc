"""Backpropagation and architectures: the chain rule for one weight, why residual connections help, what stacked
3×3 kernels see (VGG) and which Inception branch fires for which object size, each measured on a model."""

import streamlit as st

from cnnviz import backprop, charts, figures, gradients, probe
from cnnviz.text import md
from cnnviz.ui import lessonviews as lv
from cnnviz.ui import links, state, views
from cnnviz.ui.cache import figure_png

st.title("Backpropagation and architectures")
st.markdown("Training is backpropagation: the loss's gradient with respect to every weight, found by the chain rule "
            "from the loss backwards, and a small step of each weight against it. Deep networks only train well if "
            "that gradient reaches their first layers, and the architectures that raised accuracy — VGG, ResNet, "
            "Inception — are each an idea about what the layers should see and how the gradient flows. Every number "
            "below is measured on a model.")
sm = state.current()
model, info = sm.model, sm.info
presenter = st.session_state.get("presenter", False)

lv.keep()
links.restore({"arch_view": lv.LINKS["arch_view"]})
links.valid("arch_view", list(lv.VIEWS))
# One lesson at a time: Streamlit runs every tab's code on every rerun, and the residual one trains two networks.
st.session_state.setdefault("arch_view", lv.VIEWS[0])
view = st.segmented_control("Lesson", lv.VIEWS, key="arch_view", label_visibility="collapsed") or lv.VIEWS[0]
# A lesson's settings are read from the link when it is shown, and checked against the model there.
links.restore(lv.SECTION_LINKS[view])

# --- 1. backpropagation for one weight ---------------------------------------------------------------------------
if view == "Backpropagation":
    st.header("Backpropagation for one weight", divider="gray", anchor=False)
    st.markdown("Pick one weight of one filter. Its gradient — how much the loss changes when it changes — is found "
                "by the chain rule: from the loss back through the softmax and the logits, layer by layer, to the "
                "layer that holds the weight. Then one step of gradient descent moves it and the loss goes down.")
    split = views.test_split(sm)
    convs = lv.conv_layers(model)
    if split is None or not convs:
        for key in lv.SECTION_LINKS[view]:
            links.valid(key, [])  # no widget to take a link's value: it is dropped
    if split is not None and not convs:
        st.info("This model has no convolution layer, so there is no filter weight to follow.")
    elif split is not None:
        links.valid("bp_lr", list(lv.LRS))
        links.valid("bp_image", list(range(len(split))))
        links.valid("bp_layer", convs)
        c = st.columns(6)
        index = int(c[0].number_input("Test image #", 0, len(split) - 1, key="bp_image"))
        layer = c[1].selectbox("Conv layer", convs, key="bp_layer")
        w = probe.get_module(model, layer).weight  # (out, in per group, kh, kw)
        for key, n in zip(("bp_out", "bp_in", "bp_ky", "bp_kx"), w.shape):
            links.valid(key, list(range(n)))
        st.session_state.setdefault("bp_ky", w.shape[2] // 2)  # the kernel's middle weight sees every position
        st.session_state.setdefault("bp_kx", w.shape[3] // 2)
        o = int(c[2].number_input("Filter (output channel)", 0, w.shape[0] - 1, key="bp_out"))
        i = int(c[3].number_input("Input channel", 0, w.shape[1] - 1, key="bp_in"))
        ky = int(c[4].number_input("Kernel row", 0, w.shape[2] - 1, key="bp_ky"))
        kx = int(c[5].number_input("Kernel column", 0, w.shape[3] - 1, key="bp_kx"))
        weight = backprop.Weight(layer, o, i, ky, kx)
        try:
            ch = lv.chain(sm, split, index, weight)
        except ValueError as e:
            st.info(f"This lesson cannot follow this model's gradient: {md(e)}", icon=":material/info:")
            ch = None
        if ch is not None:
            words = lv.chain_sentences(ch, info.class_names)
            a, b, _ = st.columns([2, 2, 3])
            a.image(figure_png((split.info.name, "bp-image", index), lambda: figures.image_strip(
                [(f"test image #{index}: {info.class_names[ch.label]}",
                  figures.to_pil(split.x[index].float() / 255))])), width="stretch")
            b.image(figure_png((sm.model_id, "bp-kernel", layer, o, i), lambda: figures.filter_image(
                w.detach()[o, i].cpu())), width="stretch",
                caption=f"Filter {o} of {md(layer)}, its kernel on input channel {i}: the weight at row {ky}, "
                        f"column {kx} is {ch.weight_value:+.4f}.")

            st.subheader("① The loss, the softmax and the logits", anchor=False)
            st.plotly_chart(lv.logits_figure(ch, info.class_names), key="bp_logits", width="stretch")
            st.markdown(words["loss"])

            st.subheader(f"② Back through the layers to {md(layer)}", anchor=False)
            if ch.steps:
                st.plotly_chart(lv.chain_norms_figure(ch), key="bp_norms", width="stretch")
                st.dataframe(lv.chain_rows(ch), hide_index=True, width="stretch", column_config={
                    "‖gradient arriving‖": st.column_config.NumberColumn(format="%.4g"),
                    "‖gradient leaving‖": st.column_config.NumberColumn(format="%.4g")})
            st.markdown(words["steps"])

            st.subheader("③ At the weight: a sum over every position it touched", anchor=False)
            st.plotly_chart(lv.terms_figure(ch), key="bp_terms", width="stretch")
            st.markdown(words["sum"])
            st.dataframe(lv.terms_rows(ch), hide_index=True, width="stretch")
            st.caption("The five largest terms of the sum.")
            m = st.columns(3)
            m[0].metric("Chain rule, step by step", f"{ch.gradient:.6g}")
            m[1].metric("Autograd", f"{ch.autograd:.6g}")
            m[2].metric("Relative difference", f"{ch.relative_error:.1e}")
            st.markdown(words["result"])
            if ch.agrees:
                st.success(f"The chain rule and autograd agree (to {backprop.TOLERANCE:g}).",
                           icon=":material/check_circle:")
            else:
                st.error(f"They differ by more than {backprop.TOLERANCE:g}: please report this.",
                         icon=":material/error:")

            st.subheader("④ One step of gradient descent", anchor=False)
            st.markdown("w ← w − learning rate × ∂L/∂w. A small enough step lowers the loss by about learning rate × "
                        "gradient²; one weight's gradient is small, so it takes a big learning rate to see it.")
            st.session_state.setdefault("bp_lr", 10.0)
            s = st.columns([3, 2, 2])
            lr = s[0].select_slider("Learning rate", lv.LRS, key="bp_lr")
            everything = s[1].toggle("Move every weight", key="bp_all",
                                     help="Off: only the chosen weight moves. On: every weight of the network "
                                          "takes its own step.")
            step_key = (sm.model_id, split.info.name, index, weight, lr, everything)
            if s[2].button("Take one SGD step", icon=":material/trending_down:", key="bp_sgd", type="primary"):
                st.session_state.bp_sgd_result = (step_key, lv.sgd_step(sm, split, index, weight, lr, everything))
            done = st.session_state.get("bp_sgd_result")
            if done is not None and done[0] == step_key:
                result = done[1]
                r = st.columns([2, 3])
                r[0].metric("Loss before", f"{result.loss_before:.6g}")
                r[0].metric("Loss after", f"{result.loss_after:.6g}", delta=f"{result.change:+.3g}",
                            delta_color="inverse")
                r[1].plotly_chart(lv.sgd_figure(result), key="bp_sgd_chart", width="stretch")
                st.markdown(lv.sgd_sentence(result))
                st.caption("The step is taken on a copy: your model keeps its weights.")

# --- 2. why residual connections ---------------------------------------------------------------------------------
elif view == "Residual connections":
    st.header("Why residual connections", divider="gray", anchor=False)
    plain, residual = lv.PLAIN, lv.RESIDUAL
    st.markdown(f"**{plain}** and **{residual}** have the same {lv.depth(plain)} convolutions; {residual} "
                f"adds a shortcut around every two of them, so each block learns what to *add* to its input. Both "
                f"are trained here on the same images for {lv.RESIDUAL_STEPS} steps, and we measure how much "
                f"gradient each layer gets and how well each net does.")
    bn_choice = st.segmented_control(
        "Batch norm after every convolution", ["with", "without"], key="res_bn", default="with",
        help="Batch norm rescales each layer's output, which also keeps the gradient in range. Without it, nothing "
             "but the shortcuts carries the gradient back to the first layers. Each choice is trained once per "
             "server.")
    batchnorm = bn_choice != "without"
    show = lv.residual_ready(batchnorm) or st.session_state.get(f"res_asked_{batchnorm}", False)
    if not show:
        ask = st.empty()
        with ask.container():
            st.caption(f"Training two {lv.depth(plain)}-layer networks takes up to a minute on this server. It is "
                       "done once for everyone: when your class has trained them, the result opens at once.")
            if st.button(f"Train {plain} and {residual}" + ("" if batchnorm else " without batch norm"),
                         icon=":material/play_arrow:", key="res_go", type="primary"):
                st.session_state[f"res_asked_{batchnorm}"] = show = True
        if show:
            ask.empty()
    if show:
        with st.spinner(f"Training {plain}, then {residual}, {lv.RESIDUAL_STEPS} steps each (up to a minute; "
                        f"students asking at the same time share this run)…"):
            lesson = lv.residual(*lv.residual_key(batchnorm))
        m = st.columns(4)
        m[0].metric(f"{plain}: test accuracy", f"{lesson.plain.test_accuracy:.1%}")
        m[1].metric(f"{residual}: test accuracy", f"{lesson.residual.test_accuracy:.1%}",
                    delta=f"{100 * lesson.accuracy_gap:+.1f} points")
        m[2].metric(f"{plain}: first ÷ last layer's gradient", f"{lesson.plain.first_over_last:.3g}")
        m[3].metric(f"{residual}: first ÷ last layer's gradient", f"{lesson.residual.first_over_last:.3g}")
        st.plotly_chart(gradients.depth_profile(lesson), key="res_depth", width="stretch")
        st.markdown("\n".join(f"- {line}" for line in lv.residual_sentences(lesson, batchnorm=batchnorm)))
        with st.expander("The gradients over time, layer by layer", icon=":material/grid_on:"):
            left, right = st.columns(2)
            for col, name, run in ((left, plain, lesson.plain), (right, residual, lesson.residual)):
                col.markdown(f"**{name}**")
                col.plotly_chart(gradients.heatmap(run.snapshot), key=f"res_heat_{name}", width="stretch")
        with st.expander("The training curves", icon=":material/show_chart:"):
            for name, run in ((plain, lesson.plain), (residual, lesson.residual)):
                st.markdown(f"**{name}**")
                st.plotly_chart(charts.training_curves(run.history), key=f"res_curves_{name}", width="stretch")

# --- 3. VGG: stacked small kernels -------------------------------------------------------------------------------
elif view == "VGG":
    st.header("VGG: small kernels, stacked", divider="gray", anchor=False)
    st.markdown("VGG uses only 3×3 convolutions, stacked. Each one lets a unit see one pixel further on every side, "
                "so two see as far as one 5×5 kernel and three as far as one 7×7 — with fewer weights and a "
                "non-linearity between them. Counted here on your model and on mini-vgg.")
    own = lv.growth(sm)
    vgg_spec, vgg_rows = lv.vgg_growth(info)
    series = [("mini-vgg", vgg_rows)]
    if isinstance(own, str):
        st.info(f"The receptive fields of your model cannot be read from its structure: {md(own)}",
                icon=":material/info:")
    elif not own:
        st.info("Your model has no convolution layer to count.")
    else:
        series.insert(0, ("your model", own))
    st.plotly_chart(lv.field_figure(series), key="vgg_fields", width="stretch")
    names = [name for name, _ in series]
    links.valid("vgg_model", names)
    chosen = st.segmented_control("Count on", names, key="vgg_model") or names[0]
    rows = dict(series)[chosen]
    size = info.size if chosen == "your model" else vgg_spec.image_size
    st.markdown("\n".join(f"- {line}" for line in lv.vgg_sentences(chosen, rows, size)))
    st.plotly_chart(lv.weights_figure(rows), key="vgg_weights", width="stretch")
    st.dataframe(lv.field_rows(rows), hide_index=True, width="stretch")
    st.caption("\"its weights so far\": the model's own conv weights from the input up to that layer; \"one big "
               "kernel from the image instead\": one convolution from the image's channels to that layer's, with a "
               "kernel that sees as far. The last two columns (the chart) count both as if every layer had this "
               "layer's channels: VGG's comparison." +
               (f" mini-vgg is counted on a {vgg_spec.image_size}×{vgg_spec.image_size} input."
                if vgg_spec.image_size != info.size else ""))

# --- 4. Inception: which branch for which size -------------------------------------------------------------------
else:
    st.header("Inception: which branch fires for which object size", divider="gray", anchor=False)
    st.markdown("An Inception block looks at its input through a 1×1, a 3×3 and a 5×5 convolution and a pooling at "
                "once, and stacks what each finds: the right kernel size depends on how big the thing to see is. "
                "Here each branch's average activation is measured on shapes drawn at three sizes.")
    blocks = lv.inception_blocks(model) if info.name == "shapes" else []
    links.valid("inc_block", blocks)
    if not lv.inception_blocks(model):
        st.info("This needs a model with Inception blocks, and yours has none. Train a mini-inception on shapes "
                "(about a minute), then come back.", icon=":material/info:")
        links.open_train("Open the Train page with the mini-inception preset on shapes",
                         {"train_dataset": "shapes", "train_preset": "mini-inception"}, key="inc_train_none")
    elif info.name != "shapes":
        st.info(f"The object sizes are measured on the shapes dataset (its images come with object masks); this "
                f"model was trained on {md(info.title)}. Train a mini-inception on shapes to measure it.",
                icon=":material/info:")
        links.open_train("Open the Train page with the mini-inception preset on shapes",
                         {"train_dataset": "shapes", "train_preset": "mini-inception"}, key="inc_train_other")
    else:
        block = st.selectbox("Inception block", blocks, key="inc_block")
        table = lv.branch_response(sm, block)
        st.plotly_chart(lv.branch_figure(table), key="inc_heat", width="stretch")
        st.markdown("\n".join(f"- {line}" for line in lv.branch_sentences(table)))
        st.dataframe(table.rows(), hide_index=True, width="stretch")
        st.caption("Each number is the branch's mean activation on the images of that size, divided by its mean over "
                   "all of them: above 1, the branch responds more to objects of that size than on average.")

links.publish(["arch_view", *lv.SECTION_LINKS[view]])
