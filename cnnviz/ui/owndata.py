"""The Train page's "Your images" source: a zip of class folders, or classes made in the browser by upload or camera.

The dataset made here is the session's own (``st.session_state.own_data``): its images never reach another student
and go when the session ends. Bad files are listed with their reasons and skipped; a refused dataset keeps the last
good one.
"""

from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from cnnviz import data, folders, images
from cnnviz.data import DatasetError
from cnnviz.text import md

ZIP_MB = 100  # the largest zip a student may upload (the server's upload limit, .streamlit/config.toml)
SIZES = (32, 64)
MAX_CLASSES = 10  # classes made in the browser


def _classes() -> dict[str, list[tuple[str, bytes]]]:
    """Classes made in the browser so far: name → [(file name, bytes)], in the order they were made."""
    return st.session_state.setdefault("own_classes", {})


def _use(loaded: data.Loaded, digest: str) -> None:
    st.session_state.own_data = loaded
    st.session_state.own_data_digest = digest


def _report(loaded: data.Loaded) -> None:
    """What was kept, what was skipped and why; file and class names are shown as data, never as Markdown."""
    info = loaded.train.info
    counts = [int((loaded.train.y == c).sum() + (loaded.test.y == c).sum()) for c in range(info.num_classes)]
    st.success(f"{sum(counts):,} images in {info.num_classes} classes: "
               + ", ".join(f"{md(name)} ({n})" for name, n in zip(info.class_names, counts))
               + f". {len(loaded.test):,} of them are kept aside to test the trained model.",
               icon=":material/check_circle:")
    for warning in loaded.warnings:
        st.warning(md(warning), icon=":material/warning:")
    if loaded.skipped:
        n = len(loaded.skipped)
        with st.expander(f"{n} file{'s' * (n != 1)} skipped", icon=":material/block:"):
            st.dataframe(pd.DataFrame([{"file": s.name, "why": s.reason} for s in loaded.skipped]),
                         hide_index=True)


def builder() -> data.Loaded | None:
    """Make the session's dataset from the user's images; returns it (or the last good one), else None."""
    c = st.columns([2, 1, 2])
    how = c[0].segmented_control("Your images", ["Upload a zip", "Make classes here"], key="own_how",
                                 default="Upload a zip") or "Upload a zip"
    size = c[1].selectbox("Image size", SIZES, key="own_size",
                          help="Every picture is resized to this square. 32 trains fastest; 64 keeps more detail.")
    resize = c[2].radio("Resize", images.RESIZE_POLICIES, horizontal=True, key="own_resize",
                        index=images.RESIZE_POLICIES.index(folders.RESIZE),
                        captions=["stretch to a square", "cut the middle square", "add a border"],
                        help="Cutting the middle square keeps shapes as they are (a circle stays round); "
                             "stretching turns a wide photo's square into a tall rectangle.")
    if how == "Upload a zip":
        _from_zip(size, resize)
    else:
        _from_browser(size, resize)
    loaded = st.session_state.get("own_data")
    if loaded is not None:
        _report(loaded)
    return loaded


def _from_zip(size: int, resize: str) -> None:
    st.caption("A .zip of one folder per class: `cats/…`, `dogs/…`. Zip the folder that holds them. PNG, JPEG, GIF, "
               f"BMP, TIFF or WebP; at least {folders.MIN_PER_CLASS} pictures per class.")
    up = st.file_uploader("A .zip of class folders", type=["zip"], key="own_zip", max_upload_size=ZIP_MB)
    if up is None:
        return
    raw = up.getvalue()
    digest = hashlib.sha1(raw + f"{size}{resize}".encode()).hexdigest()
    if st.session_state.get("own_data_digest") == digest:
        return
    try:
        with st.spinner("Reading your pictures…"):
            loaded = data.from_folder(raw, size=size, resize=resize, title=up.name.removesuffix(".zip"))
    except DatasetError as e:
        st.error(f"{md(e)} Nothing was changed.", icon=":material/error:")
        return
    _use(loaded, digest)


def _from_browser(size: int, resize: str) -> None:
    classes = _classes()
    st.caption("Name a class, then give it pictures: upload some, or take several with the camera. Two classes of "
               f"at least {folders.MIN_PER_CLASS} pictures each are enough to start.")
    a, b = st.columns([3, 1], vertical_alignment="bottom")
    name = a.text_input("New class name", key="own_new_class", max_chars=40, placeholder="e.g. cups")
    if b.button("Add class", icon=":material/add:", key="own_add_class",
                disabled=not name.strip() or len(classes) >= MAX_CLASSES):
        if name.strip() in classes:
            st.warning("There is already a class of that name.")
        else:
            classes[name.strip()] = []
    for i, (cls, pictures) in enumerate(list(classes.items())):
        with st.container(border=True):
            h = st.columns([3, 1], vertical_alignment="center")  # the count is written once the uploads are in
            if h[1].button("Remove", key=f"own_remove_{i}", icon=":material/delete:"):
                del classes[cls]
                st.rerun()
            ups = st.file_uploader(f"Pictures of {cls}", accept_multiple_files=True, key=f"own_files_{i}",
                                   type=["png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp"],
                                   max_upload_size=images.MAX_BYTES // images.MB, label_visibility="collapsed")
            known = {hashlib.sha1(raw).hexdigest() for _, raw in pictures}
            for up in ups or []:
                raw = up.getvalue()
                if hashlib.sha1(raw).hexdigest() not in known:
                    pictures.append((up.name, raw))
                    known.add(hashlib.sha1(raw).hexdigest())
            h[0].markdown(f"**{md(cls)}** · {len(pictures)} picture{'s' * (len(pictures) != 1)}")
    if classes:
        with st.expander("Take pictures with the camera", icon=":material/photo_camera:"):
            target = st.selectbox("Add each photo to", list(classes), key="own_camera_class")
            shot = st.camera_input("Take a photo", key="own_camera")
            if shot is not None:
                raw = shot.getvalue()
                digest = hashlib.sha1(raw).hexdigest()
                if st.session_state.get("own_camera_last") != digest:  # each new photo is added once
                    st.session_state.own_camera_last = digest
                    classes[target].append((f"camera-{len(classes[target]) + 1}.jpg", raw))
                    st.toast(f"Added a photo to {md(target)}.")
                    st.rerun()  # the class's count above, and the Use button, include it
    ready = len(classes) >= 2 and all(len(p) >= folders.MIN_PER_CLASS for p in classes.values())
    if st.button("Use these classes", type="primary", icon=":material/done:", key="own_use", disabled=not ready):
        digest = hashlib.sha1(repr([(c, [hashlib.sha1(r).hexdigest() for _, r in p]) for c, p in classes.items()])
                              .encode() + f"{size}{resize}".encode()).hexdigest()
        try:
            with st.spinner("Reading your pictures…"):
                loaded = data.from_images(classes, size=size, resize=resize)
        except DatasetError as e:
            st.error(f"{md(e)} Nothing was changed.", icon=":material/error:")
            return
        _use(loaded, digest)
