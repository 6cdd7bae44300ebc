"""Lessons: short guided steps a teacher can run on a projector; each step shows what it says, on the current model."""

import streamlit as st

from cnnviz import data, lessons
from cnnviz.ui import dissection, links, state, views


def _train_label(p: dict) -> str:
    """The set-up button's words, from what it sets: "Open the Train page on Parts with 200 training images…"."""
    words = ["Open the Train page"]
    if "train_dataset" in p:
        words.append(f"on {data.info(p['train_dataset']).title}")
    setting = [f"{p['train_size']} training images" if "train_size" in p else "",
               f"{p['train_epochs']} epochs" if "train_epochs" in p else ""]
    if any(setting):
        words.append("with " + " and ".join(x for x in setting if x))
    return " ".join(words)


sm = state.current()
ids = [x.id for x in lessons.LESSONS]
links.restore({"lesson": str, "step": int})
links.valid("lesson", ids)
presenter = st.session_state.get("presenter", False)

if "lesson" not in st.session_state:
    st.title("Lessons")
    st.markdown("Short guided lessons for a class or for yourself. Each step says one thing and shows it, on the "
                "model you have now. Turn on **Presenter mode** in the sidebar for a projector, and share a lesson "
                "with the link in your browser's address bar.")
    for lesson in lessons.LESSONS:
        with st.container(border=True):
            st.subheader(lesson.title, anchor=False)
            st.write(f"{lesson.goal} · {len(lesson.steps)} steps · about {lesson.minutes} minutes")
            if st.button("Start", key=f"start_{lesson.id}", icon=":material/play_arrow:"):
                st.session_state.lesson, st.session_state.step = lesson.id, 0
                st.rerun()
    st.stop()

lesson = lessons.get(st.session_state.lesson)
n = len(lesson.steps)
i = min(max(0, int(st.session_state.get("step", 0))), n - 1)
step = lesson.steps[i]
st.query_params.update({"lesson": lesson.id, "step": str(i)})

st.caption(f"Lesson · {lesson.title} · step {i + 1} of {n}")
st.progress((i + 1) / n)
st.title(step.title)
st.markdown(f"### {step.text}" if presenter else step.text)
if sm.info.name != "shapes" and step.view in ("pointing", "gradcam"):
    st.caption("These lessons are written for the shapes dataset; with another model the pictures differ.")

# The views that show test images need them (a torchvision model has none here); a set-up button or a dissection
# does not.
if step.view in ("feature_maps", "top_patches", "pooling", "receptive", "overview", "gradcam", "pointing"):
    split = views.test_split(sm)
    if split is None:
        st.stop()
p = step.params
if step.view == "filters":
    views.filters(sm)
elif step.view == "feature_maps":
    views.feature_maps(sm, split, p.get("layer"))
elif step.view == "top_patches":
    views.top_patches(sm, split, p.get("layer"), rows=6 if presenter else 8)
elif step.view == "pooling":
    views.pooling(sm, split)
elif step.view == "receptive":
    views.receptive_fields(sm, split)
elif step.view == "maximize":
    views.maximized(sm, p.get("layer"), limit=8)
elif step.view == "overview":
    views.overview(sm, split)
elif step.view == "gradcam":
    views.gradcam_grid(sm, split, wrong=p.get("wrong", False))
elif step.view == "pointing":
    views.pointing(sm, split)
elif step.view == "evolution":
    views.evolution(sm, key="lesson_frame")
elif step.view == "train_link":
    links.open_train(_train_label(p), p, key=f"lesson_train_{i}")
elif step.view in ("dissection", "dissection_units"):
    found = dissection.measured(sm, button_key="lesson_dissect_go")
    if found is not None and step.view == "dissection":
        dissection.chart(sm, *found)
    elif found is not None:
        dissection.units(found[0], rule=False, chosen=None, model_id=sm.model_id, clickable=False)

nav = st.columns([1, 1, 4])
if nav[0].button("Back", icon=":material/arrow_back:", disabled=i == 0, key="lesson_back"):
    st.session_state.step = i - 1
    st.rerun()
if nav[1].button("Next", icon=":material/arrow_forward:", disabled=i == n - 1, key="lesson_next", type="primary"):
    st.session_state.step = i + 1
    st.rerun()
if nav[2].button("All lessons", icon=":material/list:", key="lesson_list"):
    del st.session_state.lesson
    st.query_params.clear()
    st.rerun()
