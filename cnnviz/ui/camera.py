"""The live camera's glue: the browser's video through WebRTC (``streamlit-webrtc``) into :class:`cnnviz.live.Live`.

Frames are processed in ``streamlit-webrtc``'s own worker thread, one viewer's at a time and never in the server's
event loop (``async_processing``), so a slow frame never holds up the server or another viewer. The frames that
arrived while the last one was processed come to :func:`frames_callback` together: all but the newest are counted as
dropped, so the work per viewer is bounded and no queue builds up.

Connections are made without any outside server by default (``"iceServers": []``): the browser and the app find
each other directly, which works on the same computer (localhost) and on a network that lets them reach each other.
:data:`ICE_ENV` names STUN/TURN servers for the other cases.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable

import av
import streamlit as st
from streamlit_webrtc import WebRtcMode, WebRtcStreamerContext, webrtc_streamer

from cnnviz import live
from cnnviz.ui import jobs, state

ICE_ENV = "CNNVIZ_ICE_SERVERS"
# What the browser is asked for: the network sees 32 to 224 pixels, so a small picture at a modest rate spares the
# decoding (each viewer's video is decoded and encoded again on the server) and leaves nothing to gain unprocessed.
MEDIA = {"video": {"width": {"ideal": 480}, "height": {"ideal": 360}, "frameRate": {"ideal": 20, "max": 30}},
         "audio": False}
WORDS = {
    "start": "Start the camera",
    "stop": "Stop",
    "select_device": "Choose a camera",
    "media_api_not_available": "This browser does not give the camera to this page. Browsers give it only to "
                               "pages opened over https, or on the computer that runs the app (localhost).",
    "device_ask_permission": "Allow this page to use the camera (your browser is asking).",
    "device_not_available": "No camera was found.",
    "device_access_denied": "The camera was refused. Allow it in the browser's address bar and start again.",
}


class IceServerError(ValueError):
    """The ICE servers named in :data:`ICE_ENV` cannot be used; the message says why in plain words."""


def ice_servers(raw: str | None) -> list[dict]:
    """The STUN/TURN servers in ``raw`` (the value of :data:`ICE_ENV`), ``[]`` when unset or blank.

    ``raw`` is a JSON list of RTCIceServer objects, as a browser takes them:
    ``[{"urls": ["turn:turn.example.org:3478"], "username": "class", "credential": "secret"}]``.
    An empty list is what keeps ``streamlit-webrtc`` from falling back to a public STUN server.
    """
    if raw is None or not raw.strip():
        return []
    try:
        servers = json.loads(raw)
    except json.JSONDecodeError as e:
        raise IceServerError(f"{ICE_ENV} is not valid JSON ({e.msg} at character {e.pos}).") from None
    if not isinstance(servers, list):
        raise IceServerError(f"{ICE_ENV} must be a JSON list of servers, like "
                             '[{"urls": ["turn:turn.example.org:3478"], "username": "…", "credential": "…"}].')
    for i, server in enumerate(servers):
        urls = server.get("urls") if isinstance(server, dict) else None
        urls = [urls] if isinstance(urls, str) else urls
        if not urls or not isinstance(urls, list) or not all(
                isinstance(u, str) and u.startswith(("stun:", "turn:", "turns:")) for u in urls):
            raise IceServerError(f"Server {i + 1} in {ICE_ENV} needs \"urls\": addresses that start with stun:, "
                                 f"turn: or turns:.")
        if any(not isinstance(server.get(k, ""), str) for k in ("username", "credential")):
            raise IceServerError(f"Server {i + 1} in {ICE_ENV}: \"username\" and \"credential\" must be text.")
    return servers


def rtc_configuration() -> tuple[dict, str]:
    """The WebRTC configuration for browser and server, and a problem with :data:`ICE_ENV` in words ("" if none).

    A setting that cannot be used is not used: the camera still works where no STUN/TURN server is needed.
    """
    try:
        return {"iceServers": ice_servers(os.environ.get(ICE_ENV))}, ""
    except IceServerError as e:
        return {"iceServers": []}, str(e)


def viewer(sm: state.SessionModel, settings: live.Settings) -> live.Live:
    """This session's :class:`~cnnviz.live.Live` for its current model, with ``settings`` applied.

    One per session, made again when the model changes (its counters start again); kept in the session's state, so
    the video's worker thread and the page's reruns see the same one.
    """
    held: live.Live | None = st.session_state.get("_camera_live")
    if held is None or st.session_state.get("_camera_live_for") != sm.model_id:
        held = live.Live(sm.model, sm.info, settings, threads=jobs.TORCH_THREADS)
        st.session_state._camera_live = held
        st.session_state._camera_live_for = sm.model_id
    elif held.settings != settings:
        held.settings = settings
    return held


def layers(sm: state.SessionModel) -> list[str]:
    """The current model's layers with maps (:func:`cnnviz.live.map_layers`), found once per model and session."""
    found = st.session_state.get("_camera_layers")
    if found is None or found[0] != sm.model_id:
        found = (sm.model_id, live.map_layers(sm.model, sm.info))
        st.session_state._camera_layers = found
    return found[1]


def frames_callback(viewing: live.Live) -> Callable[[list[av.VideoFrame]], Awaitable[list[av.VideoFrame]]]:
    """``streamlit-webrtc``'s queued-frames callback for ``viewing``: the newest frame is processed, the others are
    counted as dropped; a frame that could not be processed goes back as it came (the failure is in ``counts()``)."""

    async def callback(frames: list[av.VideoFrame]) -> list[av.VideoFrame]:
        newest = frames[-1]
        try:
            viewing.drop(len(frames) - 1)
            result = viewing.process(newest.to_ndarray(format="rgb24"))
            return [newest if result is None else av.VideoFrame.from_ndarray(result.image, format="rgb24")]
        except Exception as e:  # raised here, it would stop the video in silence: the page shows it instead
            viewing.failed(e)
            return [newest]

    return callback


def served() -> bool:
    """Whether a Streamlit server runs this script: ``AppTest`` runs pages without one, and WebRTC needs it."""
    from streamlit.runtime import Runtime

    # AppTest's stand-in passes isinstance (a mock with Runtime's spec); only its type tells.
    return Runtime.exists() and type(Runtime.instance()) is Runtime


def streamer(viewing: live.Live, configuration: dict, key: str = "camera") -> WebRtcStreamerContext | None:
    """The video element and its start/stop buttons: the browser's camera in, ``viewing``'s pictures back (None,
    and nothing shown, without a server: see :func:`served`)."""
    if not served():
        return None
    return webrtc_streamer(key=key, mode=WebRtcMode.SENDRECV, rtc_configuration=configuration,
                           media_stream_constraints=MEDIA, queued_video_frames_callback=frames_callback(viewing),
                           async_processing=True, translations=WORDS,
                           video_html_attrs={"autoPlay": True, "controls": False, "muted": True, "style": {
                               # The shape of the pictures sent back, from the start: the camera's own first frames
                               # (before the first is processed) would otherwise size the box for good.
                               "width": "100%", "aspectRatio": f"{3 * live.PANEL} / {live.PANEL + live.BAND}"}})
