"""The AIOps plugin: anomalies in every series of the stream, and log templates.

See docs/aiops.md. The hooks are in :mod:`opstrata.plugins.aiops.plugin`.
"""
