"""Convolution step by step: one output number of a conv layer computed in front of you, then the same for pooling."""

import streamlit as st

from cnnviz import figures, probe, stepper
from cnnviz.ui import cache, links, state, widgets
from cnnviz.ui.cache import figure_png

st.title("Convolution step by step")
st.markdown("A convolution layer slides each of its filters over its input. At every position it multiplies the "
            "numbers under the filter by the filter's weights, adds them all up, adds a bias — and that single "
            "number is one cell of a feature map. Pick a cell and see it computed.")
sm = state.current()
model, info = sm.model, sm.info
presenter = st.session_state.get("presenter", False)

with st.sidebar if presenter else st.expander("Image", icon=":material/image:", expanded=False):
    picked = widgets.image_picker(info, key="explore")
if picked is None:
    st.info("Pick an image in the Image box above to start.", icon=":material/arrow_upward:")
    st.stop()
ins = cache.inspection(model, sm.model_id, info, picked.data, "crop" if info.resize_to else "squash", None)

SHARED = links.CONVOLUTION
links.restore(SHARED)
convs = probe.layer_names(model, "conv")
links.valid("conv_layer", convs)

# --- pick a cell -------------------------------------------------------------------------------------------------
c = st.columns(4)
layer = c[0].selectbox("Conv layer", convs, key="conv_layer")
out = ins.records[layer].output[0]  # (C, H, W)
links.valid("conv_channel", list(range(out.shape[0])))
links.valid("conv_row", list(range(out.shape[1])))
links.valid("conv_col", list(range(out.shape[2])))
channel = c[1].number_input("Output channel (filter) #", 0, out.shape[0] - 1, key="conv_channel")
st.session_state.setdefault("conv_row", out.shape[1] // 2)
st.session_state.setdefault("conv_col", out.shape[2] // 2)
row = c[2].slider("Row", 0, out.shape[1] - 1, key="conv_row") if out.shape[1] > 1 else 0
col = c[3].slider("Column", 0, out.shape[2] - 1, key="conv_col") if out.shape[2] > 1 else 0
step = stepper.conv_step(model, ins.x, layer, channel, row, col, records=ins.records)

# --- show the window, the numbers and the result -----------------------------------------------------------------
left, right = st.columns(2)
top, lft, bottom, rgt = step.box
source = ins.records[layer].input[0]  # what the layer reads: the image for conv1, feature maps after that
with left:
    if source.shape[0] in (1, 3) and layer == convs[0]:
        shown, what = figures.input_image(ins.x, info), "the image the network sees"
    else:
        shown, what = figures.map_image(source[0]), f"input map #0 of {source.shape[0]}"
    st.image(figure_png((sm.model_id, picked.key, "convbox", layer, row, col), lambda: figures.image_with_boxes(
        shown, [(f"the {step.kernel.shape[1]}×{step.kernel.shape[2]} window", (top, lft, bottom, rgt))],
        title=f"Where the filter sits on {what}")), width="stretch")
with right:
    st.image(figure_png((sm.model_id, picked.key, "convcell", layer, channel, row, col), lambda: figures.map_with_cell(
        out[channel], (row, col), title=f"{layer} feature map #{channel}: the cell being computed")),
        width="stretch")

n_in = step.patch.shape[0]
show_in = list(range(min(n_in, 3 if presenter else 4)))
st.subheader("Multiply and add", anchor=False)
for i in show_in:
    st.image(figure_png((sm.model_id, picked.key, "convnum", layer, channel, row, col, i), lambda i=i: figures.number_grid(
        [(f"input, channel {i}", step.patch[i]), (f"× weights #{channel}", step.kernel[i]),
         (f"= products (sum {float(step.per_channel_sums[i]):.3f})", step.products[i])])), width="stretch")
if n_in > len(show_in):
    st.caption(f"… and {n_in - len(show_in)} more input channels, computed the same way.")

sums = " + ".join(f"{float(v):.3f}" for v in step.per_channel_sums[:6]) + (" + …" if n_in > 6 else "")
lines = [f"Sum of the products over all {n_in} input channel{'s' if n_in > 1 else ''}: {sums} "
         f"= **{float(step.per_channel_sums.sum()):.4f}**",
         (f"Plus the bias {step.bias:.4f} → **{step.total:.4f}**, the convolution's output." if step.norm is None
          else f"This conv has no bias of its own (the batch norm after it adds one): **{step.total:.4f}** is the "
               f"convolution's output.")]
if step.norm is not None:
    n = step.norm
    lines.append(f"Batch norm ({n.name}) rescales it with numbers learned in training: ({step.total:.4f} − "
                 f"{n.mean:.4f}) / √({n.var:.4f} + ε) × {n.weight:.4f} + {n.bias:.4f} = **{n.value:.4f}**.")
if step.activation_name is not None:
    lines.append(f"The activation ({step.activation_name}) keeps positive values and turns negative ones into 0 → "
                 f"**{step.activated:.4f}**." if "relu" in step.activation_name else
                 f"The activation ({step.activation_name}) gives **{step.activated:.4f}**.")
st.markdown("\n".join(f"{i + 1}. {t}" for i, t in enumerate(lines)))
match = abs(step.total - step.output) < 1e-4 * max(1.0, abs(step.output))
st.success(f"The network's own {layer} output at channel {channel}, row {row}, column {col} is "
           f"{step.output:.4f} — the same number" if match else
           f"The network's own output is {step.output:.4f}, which differs: please report this.",
           icon=":material/check_circle:" if match else ":material/error:")


# --- sweep -------------------------------------------------------------------------------------------------------
st.subheader("Slide the filter over the whole input", anchor=False)
st.caption("Press play: the window moves cell by cell, row by row, and the feature map fills in. Every cell is one "
           "multiply-and-add like the one above, with the same weights — that is what 'convolution' means.")
h, w = out.shape[1:]
playing = st.toggle("Play", key="conv_play")
speed = max(1, (h * w) // 40)  # about 40 frames for the whole map


@st.fragment(run_every=0.4 if playing else None)
def sweep() -> None:
    pos = min(st.session_state.get("conv_sweep", 0), h * w)  # the map may be smaller than the last one
    if playing:
        pos = pos + speed if pos < h * w else 0
    cols = st.columns([3, 1])
    if cols[1].button("Step", icon=":material/skip_next:", key="conv_step_btn"):
        pos = min(h * w, pos + 1)
    if cols[1].button("Reset", icon=":material/restart_alt:", key="conv_reset"):
        pos = 0
    st.session_state.conv_sweep = pos
    cell = divmod(max(pos - 1, 0), w) if pos else None
    cols[0].image(figures.to_png(figures.map_with_cell(out[channel], cell, revealed=pos,
                                                       title=f"{layer} #{channel}: {min(pos, h * w)} of {h * w} cells"),
                                 dpi=80), width="stretch")


sweep()

# --- pooling -----------------------------------------------------------------------------------------------------
st.header("And pooling?", divider="gray", anchor=False)
pools = [p.name for p in probe.pooling_pairs(ins.records)]  # max and average pooling with windows
if not pools:
    st.info("This model has no pooling layer.")
else:
    links.valid("pool_layer", pools)
    c = st.columns(4)
    player = c[0].selectbox("Pooling layer", pools, key="pool_layer")
    pout = ins.records[player].output[0]
    links.valid("pool_channel", list(range(pout.shape[0])))
    links.valid("pool_row", list(range(pout.shape[1])))
    links.valid("pool_col", list(range(pout.shape[2])))
    pch = c[1].number_input("Channel #", 0, pout.shape[0] - 1, key="pool_channel")
    prow = c[2].slider("Row ", 0, pout.shape[1] - 1, key="pool_row") if pout.shape[1] > 1 else 0
    pcol = c[3].slider("Column ", 0, pout.shape[2] - 1, key="pool_col") if pout.shape[2] > 1 else 0
    ps = stepper.pool_step(model, ins.x, player, pch, prow, pcol, records=ins.records)
    pin = ins.records[player].input[0][pch]
    a, b = st.columns(2)
    a.image(figure_png((sm.model_id, picked.key, "poolbox", player, pch, prow, pcol), lambda: figures.image_with_boxes(
        figures.map_image(pin), [("the pooling window", ps.box)], title=f"{player} input, channel #{pch}")),
        width="stretch")
    b.image(figure_png((sm.model_id, picked.key, "poolnum", player, pch, prow, pcol), lambda: figures.number_grid(
        [("values in the window", ps.window)], cmap="viridis")), width="stretch")
    verb = (f"keeps the largest, **{ps.value:.4f}** (at row {ps.winner[0]}, column {ps.winner[1]} of the window)"
            if ps.kind == "max" else f"averages them: sum / {ps.divisor} = **{ps.value:.4f}**")
    st.markdown(f"{'Max' if ps.kind == 'max' else 'Average'} pooling looks at the {ps.window.shape[0]}×"
                f"{ps.window.shape[1]} window and {verb}. The network's own output there is {ps.output:.4f}. There "
                f"are no weights to learn: pooling just summarises, so the map shrinks from {tuple(pin.shape)} to "
                f"{tuple(pout.shape[1:])}.")

links.publish(list(SHARED))
