"""Streamlit glue: session state, the background training job, shared widgets, views and caches.

The only part of cnnviz that imports Streamlit (besides ``app.py`` and ``pages/``).
"""
