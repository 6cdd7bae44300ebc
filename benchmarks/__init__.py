"""cnnviz's benchmark suite: ``python -m benchmarks [SECTION ...] [--quick] [--json]`` (or ``make bench``).

Each section measures one thing a user waits for and prints it beside its target (PASS/MISS; never asserted):

- ``train-shapes``  ``cnnviz train --dataset shapes`` in a fresh process: accuracy, wall time, images/s, peak RSS
- ``train-mnist``   the same on MNIST, side by side with PyTorch's examples/mnist recipe given the same wall time
- ``probe``         ``probe.run`` + ``gradcam.compute`` on one image: the shipped model and a ResNet-18
- ``pointing``      does the Grad-CAM peak fall on the object? (pointing game on shapes, vs random weights)
- ``app-train``     training in the app's background job, with a page polling it, vs ``train.fit`` directly
- ``first-paint``   ``streamlit run app.py``: server start, and page load → title visible in headless Chromium
- ``explore``       the Explore page from an upload to every view rendered (AppTest), cold and warm
- ``learn``         activation maximisation and top patches for each conv/relu/pool layer of the shipped model
"""
