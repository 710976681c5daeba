"""Side effects behind small interfaces: plain values in, plain values out.

Adapters never import models, jobs or the API.
"""
