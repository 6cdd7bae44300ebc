"""cnnviz's benchmark suite: ``python -m benchmarks [SECTION ...] [--quick] [--json]`` (or ``make bench``).

Each section measures one thing a user waits for and prints it beside its target, PASS or MISS; a miss makes the
run exit with status 1. A full run rewrites its sections' parts of ``docs/benchmarks.md`` (see ``docs.py``).

- ``train-shapes``  ``cnnviz train --dataset shapes`` in a fresh process: accuracy, wall time, images/s, peak RSS
- ``train-mnist``   the same on MNIST
- ``train-presets`` the same on shapes for mini-vgg, mini-resnet and mini-inception: accuracy and training seconds
- ``mnist-to-99``   training time to 99 % test accuracy: cnnviz's default against PyTorch's examples/mnist recipe
- ``probe``         ``probe.run`` + ``gradcam.compute`` on one image: the shipped model and a ResNet-18
- ``gradcam-libs``  Grad-CAM of a ResNet-18 against pytorch-grad-cam and TorchCAM: agreement and time per map
- ``pointing``      does the Grad-CAM peak fall on the object? (held-out shapes, vs the centre and random weights)
- ``app-train``     training in the app's background job, with a page polling it, vs ``train.fit`` directly
- ``browser-train`` the Train page in headless Chromium against ``cnnviz train``, and the server's own CPU
- ``first-paint``   ``streamlit run app.py``: server start, and page load → title visible in headless Chromium
- ``explore``       the Explore page from an upload to every view rendered (AppTest), cold and warm
- ``learn``         activation maximisation and top patches for each conv/relu/pool layer of the shipped model
- ``memory``, ``classroom``, ``load``  one server for a class: memory after big uploads, 30 pages at once, an
  upload while two jobs train
"""
