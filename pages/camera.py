"""Live camera: each frame of the browser's camera through the current model: prediction, Grad-CAM, feature maps."""

import streamlit as st

from cnnviz import explain, gradcam, images, live
from cnnviz.text import md
from cnnviz.ui import camera, links, state, widgets

REFRESH = 0.5  # seconds between updates of the prediction and the counters beside the video

st.title("Live camera")
sm = state.current()
info = sm.info
st.caption(f"Looking inside {widgets.model_summary(sm)}")
colour = "in grey" if info.channels == 1 else "in colour"
st.markdown(
    f"Hold something in front of the camera. Every frame goes through the network, and the video comes back as "
    f"three pictures: **what the network sees** (the frame shrunk to {info.size}×{info.size} pixels {colour}), "
    f"**Grad-CAM** (red where the network found its evidence for the class it predicts) and the **feature maps** "
    f"of one layer (bright where a map responds strongly). The network's answer is written beside the video.")

# --- pick -------------------------------------------------------------------------------------------------------
layers = camera.layers(sm)
cam_default = gradcam.default_layer(sm.model)
for key, default in (("camera_layer", layers[0]), ("camera_cam_layer", cam_default)):
    links.valid(key, layers)  # a layer of the model looked at before
    st.session_state.setdefault(key, default)
# Each model starts from the resize its images were made with (ImageNet models: the centre crop), as on Explore.
if st.session_state.get("_camera_resize_for") != sm.model_id:
    st.session_state.camera_resize = info.resize
st.session_state._camera_resize_for = sm.model_id
c1, c2 = st.columns([3, 1])
layer = c1.select_slider("Feature maps of layer (slide to walk through the network in order)", layers,
                         key="camera_layer")
alpha = c2.slider("Grad-CAM opacity", 0.0, 1.0, 0.5, 0.05, key="camera_alpha")
with st.expander("More settings", icon=":material/settings:"):
    cam_layer = st.selectbox("Grad-CAM looks at layer", layers, key="camera_cam_layer",
                             help=f"The default, {cam_default}, is at the last convolution: its maps hold the most "
                                  f"complete parts of objects and still know where they are.")
    resize = st.radio("How the frame becomes a square", images.RESIZE_POLICIES, horizontal=True,
                      key="camera_resize", captions=["stretch it", "cut the middle square", "add a border"])

# --- compute ----------------------------------------------------------------------------------------------------
settings = live.Settings(layer=layer, cam_layer=cam_layer, resize=resize, alpha=alpha)
viewing = camera.viewer(sm, settings)
configuration, ice_problem = camera.rtc_configuration()
if ice_problem:
    st.error(f"{md(ice_problem)} The camera still works on this computer and on a network where the browser can "
             f"reach the server directly.", icon=":material/error:")
with st.expander("The camera does not start?", icon=":material/help:"):
    st.markdown(f"""
**Browsers give the camera only to pages opened over https, or on the computer that runs the app**
(`http://localhost:8501`). A student who opens `http://teacher-laptop:8501` sees the app but gets no camera.

**To serve a class over https**, give Streamlit a certificate and its key (`server.sslCertFile` and
`server.sslKeyFile`), for example a self-signed one made for the day:
```
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=cnnviz" -keyout key.pem -out cert.pem
STREAMLIT_SERVER_SSL_CERT_FILE=cert.pem STREAMLIT_SERVER_SSL_KEY_FILE=key.pem cnnviz app
```
Students then open `https://teacher-laptop:8501`; with a self-signed certificate each browser warns once and the
student accepts it.

**The video goes straight between the browser and the server** (WebRTC). On one computer, or on a school network
where the students' machines can reach the server, nothing else is needed. **A TURN server is needed** when they
cannot reach each other directly: the app runs in the cloud or behind a router, or the network blocks the kind of
traffic video uses (guest Wi-Fi often keeps devices apart). Name it in `{camera.ICE_ENV}` before starting the app
(every browser that opens this page receives the setting, password included: WebRTC works that way):
```
{camera.ICE_ENV}='[{{"urls": ["turn:turn.example.org:3478"], "username": "class", "credential": "secret"}}]'
```

**The server does the work**: each viewer's video is decoded, sent through the network and encoded again there,
one frame at a time. With many viewers each one gets fewer frames a second (the counter beside the video says how
many), but the picture never lags behind.
""")

video, words = st.columns([3, 1], gap="medium")
with video:
    ctx = camera.streamer(viewing, configuration)
playing = ctx is not None and ctx.state.playing


# --- show -------------------------------------------------------------------------------------------------------
@st.fragment(run_every=REFRESH if playing else None)
def now() -> None:
    """The prediction and the counters, read from the video's worker thread twice a second."""
    counts = viewing.counts()
    if counts.error:
        st.error(f"The last frame could not go through the network: {md(counts.error)}. The video goes on showing "
                 f"the camera as it is; the details are in the server's log.", icon=":material/error:")
    result = viewing.latest()
    if result is None:
        st.info("Press **Start the camera** and allow the browser to use it. Nothing is recorded: each frame is "
                "looked at once and forgotten.", icon=":material/videocam:")
        return
    (best, p), rest = result.top[0], result.top[1:]
    st.markdown(f"### Prediction now: **{md(best)}** ({p:.0%})")
    st.markdown("Next: " + ", ".join(f"{md(name)} {q:.0%}" for name, q in rest))
    st.caption(f"The last frame's **{md(layer)}**: {explain.shape_words(tuple(result.maps.shape))}; the grid shows "
               f"the {min(settings.maps, len(result.maps))} most active.")
    st.caption(f"{counts.processed:,} frames through the network ({counts.fps:.0f} a second), Grad-CAM on "
               f"{counts.cams:,} of them ({counts.cam_fps:.0f} a second), {counts.dropped:,} dropped.")


with words:
    if ctx is None:
        st.info("The video needs the app's server (`cnnviz app`): this page is being run without one.",
                icon=":material/videocam_off:")
    else:
        now()
    st.caption("A frame is dropped when it arrives while the one before is still going through the network: the "
               "server never keeps a line of waiting frames, so the picture stays live when many watch at once. "
               "Where Grad-CAM would slow the video down, it runs on fewer frames, and the frames between show the "
               "last heatmap.")
