"""Guided lessons for a classroom: short steps, each with words and the view that shows what the words claim.

Pure data: the Lessons page renders each step's ``view`` (a name from :data:`VIEWS`) with its ``params``, on the
session's current model, so every claim is checked on screen rather than asserted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The views a lesson step can show; the Lessons page draws each one.
VIEWS = ("filters", "feature_maps", "top_patches", "pooling", "receptive", "maximize", "overview", "gradcam",
         "pointing", "evolution", "train_link")


@dataclass(frozen=True)
class Step:
    title: str
    text: str
    view: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Lesson:
    id: str
    title: str
    minutes: int
    goal: str
    steps: tuple[Step, ...]


LESSONS: tuple[Lesson, ...] = (
    Lesson("filters", "What does a filter look for?", 4,
           "See that a first-layer filter is a small pattern detector, and find what it detects.", (
               Step("The filters",
                    "These are the first layer's filters: small grids of weights, each drawn as a tiny picture. "
                    "Nobody designed them; training set every number. Look for filters with a light side and a "
                    "dark side (edge detectors) and filters of one colour (colour detectors).",
                    "filters"),
               Step("Their answers on one image",
                    "Each filter is slid over the image; the result is one feature map per filter. Bright = 'my "
                    "pattern is here'. Compare the maps: different filters light up on different edges and "
                    "colours of the same object.",
                    "feature_maps", {"layer": "relu1"}),
               Step("What each one fires on",
                    "For each channel, the test-image patches that made it fire hardest. What a row of patches has "
                    "in common is what that filter looks for.",
                    "top_patches", {"layer": "relu1"}),
           )),
    Lesson("pooling", "Why pooling?", 4,
           "See that pooling shrinks the maps while keeping the strongest answers.", (
               Step("Before and after",
                    "Max pooling cuts each map into small windows and keeps only the largest value of each "
                    "(marked). The map gets several times smaller (the exact numbers are below the picture), but "
                    "the bright spots — the places where a pattern was found — survive.",
                    "pooling"),
               Step("Why that helps",
                    "The next layer now works on a smaller map, so each of its filters covers more of the image, "
                    "and a pattern that moves by a pixel still gives the same pooled answer. The boxes show how "
                    "much of the image one cell of each layer sees: it grows at every pooling layer.",
                    "receptive"),
           )),
    Lesson("deeper", "Deeper layers see more", 5,
           "See features grow from edges and colours to textures and parts, layer by layer.", (
               Step("How far each layer sees",
                    "One cell of the first layer sees a tiny window; every conv and pooling layer widens it. The "
                    "last conv layer sees a window as large as the objects.",
                    "receptive"),
               Step("What excites the first layer",
                    "Inputs synthesised to make each first-layer channel fire as strongly as possible: plain "
                    "colours and edges.",
                    "maximize", {"layer": "relu1"}),
               Step("What excites a deeper layer",
                    "The same for the deeper layer: bigger, more complex patterns — pieces of the shapes "
                    "themselves.",
                    "maximize", {"layer": "last"}),
               Step("Side by side",
                    "The top patches of each layer's busiest channel, first layer at the top. The windows grow and "
                    "the patterns get more complex as you go down: edges → textures → parts.",
                    "overview"),
           )),
    Lesson("gradcam", "Where is the model looking?", 4,
           "Use Grad-CAM to see which part of an image the network used for its answer.", (
               Step("Heatmaps for the predicted class",
                    "For each test image, Grad-CAM colours the regions that raised the predicted class's score. "
                    "Red = strong evidence. On a good model the red sits on the object, not on the background.",
                    "gradcam"),
               Step("A wrong class",
                    "Now the heatmaps for a class the network did not pick. Each heatmap is stretched to its own "
                    "maximum, so look at the score under each picture: it is far lower than the predicted class's "
                    "score on the step before, and the little evidence there is sits in odd places.",
                    "gradcam", {"wrong": True}),
               Step("How often does it point at the object?",
                    "Over many test images we check whether the hottest point of the heatmap lies on the object "
                    "(the 'pointing game'). The number below is measured right now on your model.",
                    "pointing"),
           )),
    Lesson("overfitting", "Overfitting: train on 200 images", 6,
           "See a model memorise a small training set and fail on new images.", (
               Step("Set it up",
                    "Open the Train page with only 200 training images and many epochs (the link sets it up), and "
                    "press Train. Watch the two accuracy curves: training (blue) and test (orange).",
                    "train_link", {"train_size": "200", "train_epochs": 30}),
               Step("What to look for",
                    "With 200 images the training accuracy climbs to almost 100 % while the test accuracy stays far "
                    "below: the network memorised those 200 pictures instead of learning the shapes. More data (or "
                    "augmentation) closes the gap — train again with 'all' images and compare the curves.",
                    "train_link", {"train_size": "all", "train_epochs": 4}),
               Step("What the filters learned",
                    "Replay the first-layer filters of the model you just trained: with little data they stay "
                    "noisier than the clean edge detectors of a model trained on all images.",
                    "evolution"),
           )),
)


def get(lesson_id: str) -> Lesson:
    """The lesson with this id; ``KeyError`` lists the ids."""
    for lesson in LESSONS:
        if lesson.id == lesson_id:
            return lesson
    raise KeyError(f"no lesson {lesson_id!r}; choose one of {', '.join(x.id for x in LESSONS)}")
