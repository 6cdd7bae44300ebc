"""Train: choose data, architecture and settings; watch the model learn live; keep, save or load it."""

import json
import time

import pandas as pd
import streamlit as st

from cnnviz import charts, data, diagram, figures, gradients, models, runs, train
from cnnviz.data import DatasetError
from cnnviz.text import md
from cnnviz.ui import jobs, links, owndata, state, widgets
from cnnviz.ui.cache import figure_png

st.title("Train a CNN")
st.caption("Pick a dataset and an architecture, press **Train**, and watch the network learn. Training goes on "
           "while you visit other pages.")

# --- 1. Data -----------------------------------------------------------------------------------------------------
st.header("1 · Data", divider="gray", anchor=False)
SHARED = links.TRAIN
fresh = "train_dataset" not in st.session_state
links.restore(SHARED)
YOURS = "yours"
names = [*data.DATASETS, YOURS]
links.valid("train_dataset", names)
if fresh and st.session_state.get("train_dataset") in data.DATASETS:  # a link named a dataset: start from its
    for key, value in links.dataset_defaults(st.session_state.train_dataset).items():  # settings, but the link's own
        st.session_state.setdefault(key, value)  # values win


def _dataset_defaults() -> None:
    """A new dataset starts from its own recommended architecture, number of epochs and augmentation (the user's own
    pictures: see _own_defaults)."""
    name = st.session_state.train_dataset
    st.session_state.pop("_own_defaults_for", None)
    if name != YOURS:
        st.session_state.update(links.dataset_defaults(name))


def _own_defaults(own_info: data.DatasetInfo) -> None:
    """The architecture and epochs recommended for a dataset of the user's, once per dataset."""
    if st.session_state.get("_own_defaults_for") != own_info.name:
        st.session_state._own_defaults_for = own_info.name
        st.session_state.train_preset, st.session_state.train_epochs = own_info.preset, own_info.epochs
        st.session_state.train_augment = True  # a small set learns more, and overfits less, from shifted copies


ds_name = st.selectbox("Dataset", names, format_func=lambda n: "Your images" if n == YOURS else data.DATASETS[n].title,
                       key="train_dataset", on_change=_dataset_defaults)
if ds_name == YOURS:
    loaded = owndata.builder()
    if loaded is None:
        st.info("Upload a zip of class folders, or make classes here, to train on your own pictures.",
                icon=":material/arrow_upward:")
        st.stop()
    full_train, test_split = loaded.train, loaded.test
    info = full_train.info
    _own_defaults(info)
else:
    info = data.info(ds_name)
    st.caption(f"{info.description} Classes: {', '.join(info.class_names)}.")
    try:
        full_train = state.dataset(ds_name, train=True)
        test_split = state.dataset(ds_name, train=False)
    except DatasetError as e:
        st.error(str(e), icon=":material/cloud_off:")
        st.stop()
# Validation images are held out of the training images; the test set is used once, at the end.
n_val = min(train.VAL_IMAGES, len(full_train) // 10)  # validation uses at most this many
sample = full_train.subset(16, seed=1)
st.image(figure_png(("samples", info.name), lambda: figures.sample_grid(
    sample.x, [info.class_names[int(y)] for y in sample.y], cols=16,
    title=f"Training images ({len(full_train) - n_val:,} to learn from and {n_val:,} held out to validate; "
          f"{len(test_split):,} more to test)")), width="stretch")
sizes = {**{f"{n:,}": n for n in (200, 1000, 5000) if n < len(full_train) - n_val}, "all": None}
st.session_state.setdefault("train_size", "all")
links.valid("train_size", list(sizes))
n_train = st.select_slider("Training images to use", list(sizes), key="train_size",
                           help="Fewer images train faster, and very few show overfitting: perfect on the "
                                "training images, worse on new ones.")

# --- 2. Architecture ---------------------------------------------------------------------------------------------
st.header("2 · Architecture", divider="gray", anchor=False)
links.valid("train_preset", list(models.PRESETS))
st.session_state.setdefault("train_preset", info.preset)
preset = st.radio("Preset", list(models.PRESETS), horizontal=True, key="train_preset",
                  captions=[p["description"] for p in models.PRESETS.values()])
spec = models.preset(preset, info.channels, info.size, info.num_classes)
with st.expander("Edit the blocks", icon=":material/tune:"):
    st.caption("Each row is one block. **conv**: convolution → (batchnorm) → activation → (pooling) → (dropout). "
               "**residual**: two 3×3 convolutions, and a shortcut that adds the block's input to what they make. "
               "**inception**: 1×1, 3×3, 5×5 and pooling branches side by side, their maps stacked. Cells of "
               "another type's columns are ignored.")
    number = st.column_config.NumberColumn
    edited = st.data_editor(
        pd.DataFrame(models.block_rows(spec.blocks), columns=list(models.BLOCK_COLUMNS)), num_rows="dynamic",
        key=f"blocks_{preset}_{ds_name}",
        column_config={
            "type": st.column_config.SelectboxColumn("type", options=list(models.BLOCK_TYPES), default="conv"),
            "channels": number("channels", min_value=1, max_value=models.MAX_CHANNELS, step=1, default=16),
            "kernel": number("kernel", min_value=1, max_value=models.MAX_KERNEL, step=1, default=3),
            "padding": number("padding", min_value=0, max_value=models.MAX_PADDING, step=1, default=1),
            "stride": number("stride", min_value=1, max_value=models.MAX_STRIDE, step=1, default=1),
            "activation": st.column_config.SelectboxColumn("activation", options=list(models.ACTIVATIONS),
                                                           default="relu"),
            "pool": st.column_config.SelectboxColumn("pool", options=list(models.POOLS), default="max"),
            "pool_size": number("pool size", min_value=models.POOL_SIZES[0], max_value=models.POOL_SIZES[1],
                                step=1, default=2),
            "batchnorm": st.column_config.CheckboxColumn("batchnorm", default=False),
            "dropout": number("dropout", min_value=0.0, max_value=0.9, step=0.05, default=0.0),
            **{name: number(name, min_value=1, max_value=models.MAX_CHANNELS, step=1)
               for name in ("ch1x1", "ch3x3red", "ch3x3", "ch5x5red", "ch5x5", "pool_proj")},
        },
    )
try:
    spec.blocks = [models.block_from_row(row, i + 1) for i, row in enumerate(edited.to_dict("records"))]
    rows = models.summary(spec)
except models.SpecError as e:
    st.error(f"This architecture cannot work: {e}", icon=":material/block:")
    st.stop()
total_params = sum(r.params for r in rows)
cost = models.check(spec)
table, drawing = st.columns([3, 2])
table.dataframe(pd.DataFrame([{"layer": r.name, "type": r.kind, "output shape": " × ".join(map(str, r.output_shape)),
                               "parameters": r.params} for r in rows]), hide_index=True, height=360)
table.caption(f"**{total_params:,} parameters** to learn and {cost.macs / 1e6:,.1f} million multiply-adds per "
              f"image. Each conv layer's output shape is channels × height × width.")
drawing.image(figure_png(("diagram", json.dumps(spec.to_dict(), sort_keys=True)),
                         lambda: diagram.figure(diagram.graph(spec))), width="stretch")
drawing.caption("The architecture as a graph, input at the top: each box's output shape and parameters. Dashed "
                "lines are shortcuts (residual blocks); side-by-side boxes are branches (inception blocks).")

# --- 3. Settings and training ------------------------------------------------------------------------------------
st.header("3 · Train", divider="gray", anchor=False)
c = st.columns(6)
LRS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0]
links.valid("train_epochs", list(range(1, 51)))
links.valid("train_batch", [32, 64, 128, 256])
links.valid("train_lr", LRS)
links.valid("train_opt", list(train.OPTIMIZERS))
st.session_state.setdefault("train_epochs", info.epochs)
st.session_state.setdefault("train_batch", info.batch_size)
st.session_state.setdefault("train_lr", info.lr)
epochs = c[0].number_input("Epochs", 1, 50, key="train_epochs",
                           help="Passes over the training images (small sets get more steps so they still learn).")
batch = c[1].selectbox("Batch size", [32, 64, 128, 256], key="train_batch")
lr = c[2].select_slider("Learning rate", LRS, key="train_lr",
                        help="The peak of a one-cycle schedule. Very high values make training fail: the loss "
                             "explodes (diverges) or the network gets stuck guessing at chance. Try 2.0 with "
                             "adam.")
optimizer = c[3].selectbox("Optimiser", train.OPTIMIZERS, key="train_opt")
seed = c[4].number_input("Seed", 0, 10_000, key="train_seed")
augment = c[5].toggle("Augment", key="train_augment", help="Random small shifts, turns and zooms of each image: "
                                                            "a small set learns more and overfits less.")
flips = False
if augment and ds_name == YOURS:
    flips = st.checkbox("Mirror pictures left to right too", key="train_flips",
                        help="Only when a mirrored picture is still of the same class (a cup, yes; a left arrow, no).")
links.publish(list(SHARED))
config = train.TrainConfig(epochs=int(epochs), batch_size=batch, lr=lr, optimizer=optimizer, seed=int(seed),
                           augment=augment, flips=flips)

job: jobs.TrainingJob | None = st.session_state.get("job")
running = job is not None and job.snapshot().active
b = st.columns([1, 1, 4])
if (b[0].button("Train", type="primary", icon=":material/play_arrow:", disabled=running, key="train_start")
        or st.session_state.pop("train_next", False)):
    if not running:  # a second click while a job runs never starts a second job
        if n_val:
            train_part, val_part = data.holdout(full_train, sizes[n_train], n_val, int(seed))
        else:  # a handful of pictures: every one is needed to learn from
            train_part, val_part = full_train, None
        try:
            st.session_state.job = jobs.TrainingJob(spec, train_part, val_part, test_split, config,
                                                    alive=jobs.this_session()).start()
        except jobs.ServerFull:
            st.warning("The server is full: every training slot is taken and the line of waiting students is "
                       "full too. Try again in a minute.", icon=":material/hourglass_top:")
        else:
            st.session_state.job_adopted = False
            st.session_state.job_architecture = preset if spec == models.preset(
                preset, info.channels, info.size, info.num_classes) else f"{preset} (edited)"
            running = True
if b[1].button("Stop", icon=":material/stop:", disabled=not running, key="train_stop"):
    st.session_state.job.stop()
b[2].caption(f"A training stops by itself after {jobs.TIME_CAP / 60:g} min on this server, keeping what it has "
             "learned, and when you close this tab.")

# Seconds between new points on the live charts, at least. Each Plotly redraw costs the student's browser ~0.1 s of
# CPU per chart; at every 1 s tick the Train page's browser took half a core, which a laptop's training (or the
# server's, when both share a machine) then lacks. A chart sent again unchanged costs the browser almost nothing.
CHARTS_EVERY = 3.0
# Seconds between updates of the live view (progress, and the charts when due). Each update re-renders the view in
# the browser: at 1 s the Train page's browser took 0.34 of a core while training, at 2 s 0.27.
TICK = 2.0
FILTERS_EVERY = CHARTS_EVERY  # seconds between redraws of the live filter grid, at least
FILTERS_SHARE = 0.05  # and at most this share of a core: a matplotlib figure costs 60-300 ms, more on a busy server


def live_filters(job: jobs.TrainingJob, snap: jobs.Snapshot) -> bytes:
    """The first layer's filters as a PNG, redrawn only when the job reported new ones, at most every
    FILTERS_EVERY seconds (and FILTERS_SHARE of a core) while it trains."""
    drawn = st.session_state.get("live_filters")  # (job, when, filters_step, png, CPU seconds it took)
    if (drawn is None or drawn[0] is not job or drawn[2] != snap.filters_step and (
            not snap.active or time.monotonic() - drawn[1] >= max(FILTERS_EVERY, drawn[4] / FILTERS_SHARE))):
        cpu = time.thread_time()
        png = figures.to_png(figures.filter_grid(snap.filters, title=f"First-layer filters at step "
                                                                     f"{max(0, snap.filters_step)}"), dpi=80)
        drawn = (job, time.monotonic(), snap.filters_step, png, time.thread_time() - cpu)
        st.session_state.live_filters = drawn
    return drawn[3]


def _due(drawn: tuple, snap: jobs.Snapshot) -> bool:
    """Whether a live chart drawn as ``drawn`` (job, what it shows, figure, when) gets the job's new points now."""
    return not snap.active or time.monotonic() - drawn[3] >= CHARTS_EVERY


def live_curves(job: jobs.TrainingJob, snap: jobs.Snapshot):
    """The job's curves: one figure per job, its points updated when the job reported new ones, at most every
    CHARTS_EVERY seconds while it trains, and at its end."""
    drawn = st.session_state.get("live_curves")  # (job, what it shows, figure, when)
    shown = (snap.step, len(snap.history["epochs"]), snap.status)
    if drawn is None or drawn[0] is not job:
        drawn = (job, shown, charts.training_curves(snap.history), time.monotonic())
    elif drawn[1] != shown and _due(drawn, snap):
        drawn = (job, shown, charts.update_training_curves(drawn[2], snap.history), time.monotonic())
    st.session_state.live_curves = drawn
    return drawn[2]


@st.fragment(run_every=TICK if running else None)
def live() -> None:
    job = st.session_state.get("job")
    if job is None:
        n_images = sizes[n_train] or len(full_train) - n_val
        st.info(f"Press **Train** to start: {config.total_steps(n_images):,} steps of {batch} images, from "
                f"{n_images:,} training images.", icon=":material/info:")
        return
    snap = job.snapshot()
    frac = snap.step / max(1, snap.total_steps)
    if snap.status == "queued":
        st.progress(0.0, text=snap.message or "Starting…")
    else:
        st.progress(frac, text=f"Step {snap.step} / {snap.total_steps} · {snap.images_per_s:,.0f} images/s · "
                               f"{snap.elapsed:.0f} s elapsed" + (f" · about {snap.eta:.0f} s left"
                                                                   if snap.active else ""))
    if snap.status in ("diverged", "stuck", "failed"):
        st.error(snap.message, icon=":material/warning:")
    elif snap.status in ("finished", "stopped"):
        st.success(snap.message, icon=":material/check_circle:")
    left, right = st.columns([3, 2])
    left.plotly_chart(live_curves(job, snap), key="curves", width="stretch")
    if snap.filters is not None:
        right.image(live_filters(job, snap), width="stretch")
        right.caption("Each square is one filter of the first layer, redrawn every few seconds while the network "
                      "trains. They start as random numbers; every training step adjusts them, following the "
                      "gradient of the loss on one batch of images.")
    if snap.gradients and snap.gradients["steps"]:
        grads = gradients.GradientSnapshot(**snap.gradients)
        # (job, samples drawn, figure, when): redrawn when they change, as often as the curves
        drawn = st.session_state.get("live_gradients")
        if drawn is None or drawn[0] is not job or drawn[1] != (grads.steps[-1], grads.every) and _due(drawn, snap):
            drawn = (job, (grads.steps[-1], grads.every), gradients.heatmap(grads, "grad_norm"), time.monotonic())
            st.session_state.live_gradients = drawn
        st.plotly_chart(drawn[2], key="gradients", width="stretch")
        st.caption(f"Backpropagation, live: the size of each layer's gradient (how hard the loss pulls on its "
                   f"weights), sampled every {grads.every} steps; brighter is bigger. Layers near the input getting "
                   f"far smaller gradients than those near the output learn slowly: that is what residual "
                   f"connections fix (Learn → Backpropagation and architectures).")
    if widgets.adopt_finished(snap):
        st.rerun()  # the whole page: results below and the sidebar show the new model
    if not snap.active and running:
        st.rerun()  # stop polling


live()

# --- 4. Results --------------------------------------------------------------------------------------------------
job = st.session_state.get("job")
snap = job.snapshot() if job is not None else None
if snap is not None and snap.evaluation is not None and snap.result is not None:
    ev, ck = snap.evaluation, snap.result
    names_ = ck.info.class_names
    st.header("4 · Results", divider="gray", anchor=False)
    m = st.columns(3)
    m[0].metric("Test accuracy", f"{ev.accuracy:.1%}")
    m[1].metric("Mistakes", f"{len(ev.mistakes):,} of {len(ev.predictions):,}")
    m[2].metric("Training time", f"{ck.history.seconds:.1f} s")
    r = st.columns(2)
    r[0].plotly_chart(charts.per_class_bars(ev.per_class, names_), key="per_class", width="stretch")
    r[1].plotly_chart(charts.confusion_matrix(ev.confusion, names_), key="confusion", width="stretch")
    st.caption("The confusion matrix counts test images by true class (rows) and predicted class (columns): the "
               "diagonal is right, everything else is a mistake. Hover over a cell for the count.")
    if len(ev.mistakes):
        idx = ev.mistakes[:16]
        split = state.test_split(ck.info)
        labels = [f"true {names_[int(split.y[i])]}\npred {names_[int(ev.predictions[i])]}" for i in idx]
        st.image(figures.to_png(figures.sample_grid(split.x[idx], labels, cols=8, title="The most confident mistakes "
                                                    "(true class, then what the model said)")), width="stretch")

# --- 5. Compare runs ---------------------------------------------------------------------------------------------
session_runs: runs.Runs = st.session_state.setdefault("runs", runs.Runs())
if snap is not None and snap.result is not None and st.session_state.get("run_recorded") is not job:
    st.session_state.run_recorded = job
    ck = snap.result
    session_runs.add(ck.model, st.session_state.get("job_architecture", "?"), ck.info.title, ck.info.input_shape,
                     ck.history, snap.evaluation.accuracy if snap.evaluation is not None else None,
                     {"epochs": config.epochs, "batch": config.batch_size, "lr": config.lr,
                      "optimizer": config.optimizer})
st.header("5 · Compare runs", divider="gray", anchor=False)
st.caption("Every run of this session (the last few) with its size, its cost and how well it did, and their "
           "validation curves on one chart. Train one model of each kind on the same data and compare: one click "
           "each.")


def _train_next(name: str) -> None:
    """Choose a preset and start it on the next run (a callback: it runs before the preset widget is drawn)."""
    st.session_state.train_preset, st.session_state.train_next = name, True


for col, name in zip(st.columns(4), ("mini-vgg", "mini-resnet", "mini-inception", "gap")):
    col.button(f"Train {name} on this data", icon=":material/play_arrow:", disabled=running,
               key=f"train_next_{name}", on_click=_train_next, args=(name,))
if len(session_runs):
    st.dataframe(session_runs.table(), hide_index=True,
                 column_config={"MFLOPs per image": st.column_config.NumberColumn(format="%.2f")})
    st.plotly_chart(runs.curves(session_runs), key="runs_curves", width="stretch")
else:
    st.info("Finished runs appear here.", icon=":material/info:")

# --- 6. Save and load --------------------------------------------------------------------------------------------
st.header("Save or load a model", divider="gray", anchor=False)
s = st.columns(2)
with s[0]:
    sm = state.current()
    st.markdown(widgets.model_summary(sm))
    if sm.ckpt is not None:
        widgets.save_button(sm)
    else:
        st.caption("Models trained or loaded here can be saved; this one comes from outside the app "
                   f"({md(sm.source)}). Choose **Your model** in the sidebar to save yours.")
with s[1]:
    widgets.model_loader()
