"""Guided lessons for a classroom: short steps, each with words and the view that shows what the words claim.

Pure data: the Lessons page renders each step's ``view`` (a name from :data:`VIEWS`) with its ``params``, on the
session's current model, so every claim is checked on screen rather than asserted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The views a lesson step can show; the Lessons page draws each one.
VIEWS = ("filters", "feature_maps", "top_patches", "pooling", "receptive", "maximize", "overview", "gradcam",
         "pointing", "evolution", "train_link", "dissection", "dissection_units")


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
                    "Nobody designed them; training set every number. A filter with a light side and a dark side "
                    "responds to an edge in that direction; a filter of one colour responds to that colour. Which "
                    "kinds can you find?",
                    "filters"),
               Step("Their answers on one image",
                    "Each filter is slid over the image; the result is one feature map per filter. Bright = 'my "
                    "pattern is here'. Compare the maps: which parts of the object does each filter light up on?",
                    "feature_maps", {"layer": "relu1"}),
               Step("What each one fires on",
                    "For each channel, the test-image patches that made it fire hardest. What a row of patches has "
                    "in common is what that filter looks for.",
                    "top_patches", {"layer": "relu1"}),
           )),
    Lesson("pooling", "Why pooling?", 4,
           "See that pooling shrinks the maps while keeping a summary of each window.", (
               Step("Before and after",
                    "Pooling cuts each map into small windows and keeps one number per window: max pooling the "
                    "largest (marked), average pooling the mean. The map gets several times smaller; below the "
                    "picture, what this model's pooling layer does and by how much.",
                    "pooling"),
               Step("Why that helps",
                    "The next layer now works on a smaller map, so each of its filters covers more of the image. "
                    "The boxes show how much of the image one cell of each layer sees; the numbers are below.",
                    "receptive"),
           )),
    Lesson("deeper", "Deeper layers see more", 5,
           "See how much of the image each layer sees, and what excites its channels, layer by layer.", (
               Step("How far each layer sees",
                    "One cell of the first layer sees a tiny window; every conv and pooling layer widens it. Below "
                    "the picture: how big the last layer's window is, against the size of the objects.",
                    "receptive"),
               Step("What excites the first layer",
                    "Inputs synthesised to make each first-layer channel fire as strongly as possible. A "
                    "first-layer cell sees only a few pixels, so whatever it likes is small. What do you see?",
                    "maximize", {"layer": "relu1"}),
               Step("What excites a deeper layer",
                    "The same for the deepest layer. Its cells see a much wider window (the size is below the "
                    "picture): compare its patterns with the first layer's.",
                    "maximize", {"layer": "last"}),
               Step("Side by side",
                    "The top patches of each layer's busiest channel, first layer at the top. The windows grow as "
                    "you go down; what does each row have in common?",
                    "overview"),
           )),
    Lesson("gradcam", "Where is the model looking?", 4,
           "Use Grad-CAM to see which part of an image the network used for its answer.", (
               Step("Heatmaps for the predicted class",
                    "For each test image, Grad-CAM colours the regions that raised the predicted class's score. "
                    "Red = strong evidence. Does the red sit on the object or on the background?",
                    "gradcam"),
               Step("A wrong class",
                    "Now the heatmaps for a class the network did not pick. Each heatmap is stretched to its own "
                    "maximum, so look at the score under each picture: below, how far each one is under the "
                    "predicted class's score.",
                    "gradcam", {"wrong": True}),
               Step("How often does it point at the object?",
                    "Over many test images we check whether the hottest point of the heatmap lies on the object "
                    "(the 'pointing game'), and compare with always pointing at the centre of the image. The "
                    "numbers below are measured right now on your model.",
                    "pointing"),
           )),
    Lesson("hierarchy", "Edges → textures → parts → objects, measured on your model", 8,
           "Measure what kind of feature each layer of a model you train detects, next to the same network untrained.",
           (
               Step("A dataset built from parts",
                    "The parts dataset draws ten objects (a face, a house, a car, a flower…) from shared parts (eyes, "
                    "wheels, windows, stems) on textured backgrounds, and keeps a mask of every colour, texture, part "
                    "and object in every scene. Open the Train page set up for it (the button does that) and press "
                    "Train. Then come back here.",
                    "train_link", {"train_dataset": "parts"}),
               Step("What each layer fires on",
                    "The test patches that excite each layer's busiest channel most, first layer at the top. Judge "
                    "by eye first: which rows look like colours, which like textures, which like parts or whole "
                    "objects? The next step measures it.",
                    "overview"),
               Step("Count what each layer detects",
                    "Network dissection compares where each unit fires most with the masks of every concept, and "
                    "calls a unit a detector of the concept it overlaps best. Each bar is one layer, split by the kind "
                    "of concept its units detect; on the right, the same architecture with random weights. Does the "
                    "share of part and object units grow from the first layer to the last? And without training?",
                    "dissection"),
               Step("Meet the detectors",
                    "A unit of the last layer and the scenes it fires on most; outside the region where it fires, "
                    "the scene is dimmed. Is the region on the concept the unit is counted for? Choose another layer "
                    "or kind of concept and compare.",
                    "dissection_units"),
           )),
    Lesson("overfitting", "Overfitting: train on 200 images", 6,
           "See a model memorise a small training set and fail on new images.", (
               Step("Set it up",
                    "Open the Train page with only 200 training images and many epochs (the link sets it up), and "
                    "press Train. Watch the two accuracy curves: on the training images, and on images the network "
                    "never trains on.",
                    "train_link", {"train_size": "200", "train_epochs": 30}),
               Step("What to look for",
                    "If the training accuracy climbs close to 100 % while the accuracy on new images stays far "
                    "below, the network has memorised its training pictures instead of learning what the classes "
                    "have in common. Train again with 'all' images and compare the gap between the curves.",
                    "train_link", {"train_size": "all", "train_epochs": 4}),
               Step("What the filters learned",
                    "Replay the first-layer filters of the model you just trained; below the picture, how far "
                    "training moved them from their random start. Train once with 200 images and once with all of "
                    "them, and compare.",
                    "evolution"),
           )),
)


def get(lesson_id: str) -> Lesson:
    """The lesson with this id; ``KeyError`` lists the ids."""
    for lesson in LESSONS:
        if lesson.id == lesson_id:
            return lesson
    raise KeyError(f"no lesson {lesson_id!r}; choose one of {', '.join(x.id for x in LESSONS)}")
