"""The whole family in one resumable run: foundation -> Python / long-context / instruct -> scored, reported.

This is the composition layer: it may import every other package; none imports it.
"""
