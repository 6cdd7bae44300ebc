"""Widgets every page shares: the model card in the sidebar, the model loader and the image picker."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import streamlit as st
import torch
from PIL import Image

from cnnviz import checkpoint, images, zoo
from cnnviz.data import DatasetError, DatasetInfo
from cnnviz.text import md
from cnnviz.ui import links, owndata, state


def model_summary(sm: state.SessionModel) -> str:
    """One line of Markdown about the session's model, every figure read from the model itself."""
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in sm.model.modules())
    params = sum(p.numel() for p in sm.model.parameters())
    if sm.accuracy is None:
        acc_text = "accuracy not measured"
    elif sm.accuracy_from:  # not measured here (the test set is not at hand): say whose number it is
        acc_text = f"{sm.accuracy:.1%} test accuracy ({sm.accuracy_from})"
    else:
        acc_text = f"{sm.accuracy:.1%} test accuracy"
    title = md(sm.title) if sm.ckpt is not None else md(sm.source.removeprefix("torchvision "))
    return f"**{title}** · {convs} conv layers · {params:,} parameters · {acc_text}"


# Streamlit's "running" icon swaps between five sports pictures every 200 ms while a script runs, and each swap
# repaints the page: ~0.03 of a core per open page (measured in headless Chromium), ~1 core for a class of 30 on one
# machine while the server is busy — which keeps it busy longer. A still word says the same.
QUIET_STATUS_CSS = """<style>
[data-testid="stStatusWidgetRunningIcon"] { display: none; }
[data-testid="stStatusWidget"]::before { content: "Running…"; opacity: 0.6; margin-right: 0.5rem; }
</style>"""

PRESENTER_CSS = """<style>
html, body, [data-testid="stAppViewContainer"] { font-size: 21px; }
[data-testid="stMarkdownContainer"] p, [data-testid="stCaptionContainer"] { font-size: 1.15rem; }
h1 { font-size: 3rem !important; }
</style>"""


def presenter() -> bool:
    """Presenter mode (``?presenter=1``): large type for a projector; pages show fewer controls."""
    links.restore({"presenter": links.flag})
    on = st.sidebar.toggle("Presenter mode", key="presenter", help="Large type and fewer controls, for a projector. "
                                                                   "Add ?presenter=1 to a link to open it this way.")
    if on:
        st.html(PRESENTER_CSS)
        st.query_params["presenter"] = "1"
    elif "presenter" in st.query_params:
        del st.query_params["presenter"]
    return on


def sidebar() -> None:
    """The model choice and the current model, always visible, and the state of this session's training job."""
    presenter()
    with st.sidebar:
        job = st.session_state.get("job")
        snap = job.snapshot() if job is not None else None
        if snap is not None:
            adopt_finished(snap)  # before the model choice, which then switches to the new model
        model_choice()
        sm = state.current()
        st.markdown(model_summary(sm))
        st.caption(f"Source: {md(sm.source)}")
        if sm.note:
            st.warning(md(sm.note), icon=":material/warning:")
        if sm.ckpt is None and st.session_state.get("model_choice") in zoo.NAMES:
            zoo_weights(st.session_state.model_choice)
        if snap is not None:
            if snap.status == "queued":
                st.info(snap.message or "Training: waiting to start…", icon=":material/hourglass_top:")
            elif snap.active:
                st.info(f"Training: step {snap.step} of {snap.total_steps}", icon=":material/model_training:")


def _choice_label(choice: str) -> str:
    if choice == state.OWN:
        return f"Your model: {state.own().title}"
    if choice == state.CODE:
        return f"Your code: {state.usercode.registered().info.title}"
    return f"{zoo.TITLES[choice]} (ImageNet, torchvision)"


def model_choice() -> None:
    """Which model every page explains: the session's own, the user's code, or a torchvision ImageNet model.

    The choice lives in ``model_choice``, plain session state that outlives any page; the widget only edits it. A
    link carries it as ``?model=resnet18``, so a teacher can put a whole class on the same network.
    """
    options = state.choices()
    if st.session_state.pop("_look_at_own", False):  # a model was just trained or loaded (state.set_current)
        st.session_state.model_choice = state.OWN
    if "model_choice" not in st.session_state and st.query_params.get("model") in options:
        st.session_state.model_choice = st.query_params["model"]
    if st.session_state.get("model_choice") not in options:
        st.session_state.model_choice = state.OWN
    st.session_state.model_pick = st.session_state.model_choice

    def picked() -> None:
        st.session_state.model_choice = st.session_state.model_pick

    choice = st.selectbox("Model", options, key="model_pick", format_func=_choice_label, on_change=picked,
                          help="Your own model (the built-in one, one trained on the Train page, or a file you "
                               "loaded), or a real network trained on ImageNet's 1.2 million photos. Every page shows "
                               "the one chosen here.")
    if choice == state.OWN:
        st.query_params.pop("model", None)
    elif st.query_params.get("model") != choice:
        st.query_params["model"] = choice


def zoo_weights(name: str) -> None:
    """Get ImageNet weights for a zoo model whose file is missing, or use a state dict the user uploads."""
    zm = state.zoo_model(name)
    if not zm.pretrained and st.button("Download the ImageNet weights", icon=":material/download:",
                                       key=f"zoo_download_{name}"):
        with st.spinner(f"Downloading {zoo.weights_file(name).name} into {zoo.weights_file(name).parent}…"):
            got = zoo.load(name, download=True)
        if got.pretrained:
            state.zoo_model.clear()
            st.rerun()
        st.error(md(got.note), icon=":material/cloud_off:")
    with st.expander("Use your own weights for this network"):
        limit = zoo.upload_limit(name)
        if limit > owndata.ZIP_MB * zoo.MB:  # the server's upload limit (.streamlit/config.toml)
            st.caption(f"This network's weights are {limit / zoo.MB:.0f} MB, too big to upload here: put the file "
                       f"at {md(str(zoo.weights_file(name)))} on the server instead.")
            return
        up = st.file_uploader(f"A state dict for torchvision's {name} (.pth or .pt)", type=["pth", "pt"],
                              key=f"zoo_upload_{name}", max_upload_size=-(-limit // zoo.MB),
                              help="Loaded as tensors only (nothing in the file is run); every name and shape must "
                                   "match the network.")
        if up is None:
            st.session_state.pop(f"zoo_weights_{name}", None)
            st.session_state.pop(f"zoo_weights_raw_{name}", None)
            return
        raw = up.getvalue()
        digest = hashlib.sha1(raw).hexdigest()
        if st.session_state.get(f"zoo_weights_{name}") == digest:
            return
        try:
            state._uploaded_zoo(name, digest, raw)
        except zoo.ZooError as e:
            st.error(f"{md(e)} The network keeps its weights.", icon=":material/error:")
            return
        st.session_state[f"zoo_weights_raw_{name}"] = raw
        st.session_state[f"zoo_weights_{name}"] = digest
        st.rerun()


def adopt_finished(snap) -> bool:
    """Make a finished job's model the session's model, once; True when it just happened."""
    if snap.result is None or st.session_state.get("job_adopted"):
        return False
    st.session_state.job_adopted = True
    state.set_current(snap.result, "trained here")
    return True


def model_loader(key: str = "upload_model") -> None:
    """Upload a saved model; a bad file gets a clear message and the current model stays."""
    up = st.file_uploader("Load a saved model (.pt)", type=["pt"], key=key,
                          max_upload_size=checkpoint.MAX_BYTES // checkpoint.MB,
                          help=f"A file saved from this app's Train page or by `cnnviz train --out` (at most "
                               f"{checkpoint.MAX_BYTES // checkpoint.MB} MB).")
    if up is None:
        st.session_state.pop(f"{key}_done", None)  # the same file may be loaded again later
        return
    raw = up.getvalue()
    digest = hashlib.sha1(raw).hexdigest()
    if st.session_state.get(f"{key}_done") == digest:
        return  # already loaded this very file; do not replace a model trained since
    try:
        ck = checkpoint.load(raw)
    except checkpoint.CheckpointError as e:
        # The reason may quote the file's own contents: shown as text, never as Markdown.
        st.error(f"{md(e)} Your current model is unchanged.", icon=":material/error:")
        return
    with st.spinner("Measuring the model on the test set…"):
        state.remeasure(ck)
    st.session_state[f"{key}_done"] = digest
    state.set_current(ck, f"uploaded: {up.name}")
    st.toast(f"Loaded {md(up.name)}: a {md(ck.info.title)} model.", icon=":material/check_circle:")
    st.rerun()  # redraw the sidebar, the model card and the Save button with the new model


def save_button(sm: state.SessionModel, key: str = "save_model") -> None:
    st.download_button("Save this model (.pt)", checkpoint.to_bytes(sm.ckpt),
                       file_name=f"cnnviz-{sm.ckpt.dataset}.pt", mime="application/octet-stream", key=key,
                       icon=":material/download:")


@dataclass
class PickedImage:
    """The bytes of the chosen image (any format :func:`images.load` reads), a label and a cache key."""

    data: bytes
    label: str
    key: str


def _png(x: torch.Tensor) -> bytes:
    """uint8 ``(C, H, W)`` → PNG bytes."""
    arr = x.permute(1, 2, 0).squeeze(2).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _picked(data: bytes, label: str) -> PickedImage:
    return PickedImage(data, label, hashlib.sha1(data).hexdigest())


def image_picker(info: DatasetInfo, key: str = "img") -> PickedImage | None:
    """Choose an image: from the test set, an upload, a drawing or the camera.

    Each source keeps its last good image (a damaged upload leaves the last good upload on screen); a source with
    nothing in it yet gives None, so switching to Upload shows the uploader alone, not the previous source's views.
    """
    links.restore({f"{key}_source": str, f"{key}_class": str, f"{key}_seed": int})
    links.valid(f"{key}_class", ["any"] + list(info.class_names))
    # A model without its test images here (an ImageNet model) offers the user's own pictures only.
    sources = ["Test set", "Upload", "Draw", "Camera"] if state.has_test_set(info) else ["Upload", "Camera", "Draw"]
    # The source a user chose last stays chosen when they come back from another page.
    links.valid(f"{key}_source", sources)
    kept = st.session_state.get(f"{key}_source_kept")
    st.session_state.setdefault(f"{key}_source", kept if kept in sources else sources[0])
    # Pills wrap onto a second line in a narrow column (a projector's 1024 px); a segmented control is clipped.
    source = st.pills("Image source", sources, key=f"{key}_source")
    source = source or sources[0]
    st.session_state[f"{key}_source_kept"] = source
    links.publish([f"{key}_source"])  # the address then opens on this source: a teacher's link to the uploader
    last_key = f"{key}_last_{source}"
    picked: PickedImage | None = None
    if source == "Test set":
        wanted = st.selectbox("Class", ["any"] + list(info.class_names), key=f"{key}_class")
        if st.button("Another one", icon=":material/shuffle:", key=f"{key}_shuffle"):
            st.session_state[f"{key}_seed"] = st.session_state.get(f"{key}_seed", 0) + 1
        seed = st.session_state.setdefault(f"{key}_seed", 0)
        links.publish([f"{key}_class", f"{key}_seed"])
        picked = _pick_test(info, wanted, seed)
    elif source == "Upload":
        up = st.file_uploader("Upload an image (PNG, JPEG, GIF, BMP, TIFF, WebP)", key=f"{key}_upload",
                              max_upload_size=images.MAX_BYTES // images.MB)
        if up is not None:
            picked = _checked(up.getvalue(), f"your upload {up.name}", last_key in st.session_state)
    elif source == "Draw":
        picked = _drawing(info, key)
    else:
        shot = st.camera_input("Take a photo", key=f"{key}_camera")
        if shot is not None:
            picked = _checked(shot.getvalue(), "your photo", last_key in st.session_state)
    if picked is not None:
        st.session_state[last_key] = picked
    return st.session_state.get(last_key)


def _pick_test(info: DatasetInfo, wanted: str, seed: int) -> PickedImage | None:
    try:
        split = state.test_split(info)
    except DatasetError as e:
        st.warning(str(e))
        return None
    candidates = torch.arange(len(split))
    if wanted != "any":
        candidates = (split.y == info.class_names.index(wanted)).nonzero().squeeze(1)
    g = torch.Generator().manual_seed(seed)
    index = int(candidates[torch.randint(len(candidates), (1,), generator=g)])
    return _picked(_png(split.x[index]), f"test image #{index} (a {info.class_names[int(split.y[index])]})")


def _checked(data: bytes, label: str, kept: bool) -> PickedImage | None:
    """The upload if it is a usable image; else one friendly message, and the last good image (``kept``: there is
    one) stays.

    An upload stays in its widget across reruns; it is decoded (up to 40 megapixels) once, not on every slider move.
    """
    picked = _picked(data, label)
    verdict = st.session_state.get("_checked_upload")  # (digest, error message or None) of the last upload
    if verdict is None or verdict[0] != picked.key:
        try:
            state.bring(picked.key, images.load(data))
            verdict = (picked.key, None)
        except images.ImageError as e:
            verdict = (picked.key, str(e))
        st.session_state["_checked_upload"] = verdict
    if verdict[1] is not None:
        then = " The last good image is still shown below." if kept else " Please choose another file."
        st.error(md(verdict[1]) + then, icon=":material/broken_image:")
        return None
    return picked


def _drawing(info: DatasetInfo, key: str) -> PickedImage | None:
    """Paint pixels with the mouse: lasso or box-select cells of a grid (no extra component needed)."""
    import plotly.graph_objects as go

    n = min(info.size, 32)  # a 224×224 grid would be 50,176 points to paint; the drawing is resized like any image
    ink: set[int] = st.session_state.setdefault(f"{key}_ink_{n}", set())  # per grid size: models differ
    c = st.columns([3, 1])
    if c[1].button("Clear", icon=":material/ink_eraser:", key=f"{key}_clear"):
        ink.clear()
        st.session_state.pop(f"{key}_canvas", None)
    c[1].caption("Drag a lasso (or a box) over the grid to paint those cells; each stroke adds ink.")
    cells = torch.arange(n * n)
    rows, cols = cells // n, cells % n
    painted = [i in ink for i in range(n * n)]
    fig = go.Figure(go.Scatter(
        x=cols.tolist(), y=rows.tolist(), mode="markers", hoverinfo="none",
        marker=dict(symbol="square", size=max(4, 300 // n - 1), color=["black" if p else "#e8e8e8" for p in painted]),
    ))
    fig.update_layout(width=340, height=340, margin=dict(l=0, r=0, t=0, b=0), dragmode="lasso", showlegend=False,
                      xaxis=dict(visible=False, range=[-1, n]), yaxis=dict(visible=False, range=[n, -1]),
                      plot_bgcolor="white")
    with c[0]:
        event = st.plotly_chart(fig, on_select="rerun", selection_mode=("lasso", "box"), key=f"{key}_canvas")
    selected = set(event.selection.point_indices) if event and event.selection else set()
    if selected - ink:
        ink |= selected
        st.rerun()
    if not ink:
        return None
    arr = torch.full((n * n,), 255, dtype=torch.uint8)
    arr[list(ink)] = 0
    buf = io.BytesIO()
    Image.fromarray(arr.view(n, n).numpy(), "L").save(buf, format="PNG")
    return _picked(buf.getvalue(), "your drawing")
