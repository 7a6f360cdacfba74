"""The commands of ``agentic`` (see :mod:`agentic.cli`), one module per group.

Private: the command line is the interface, these modules are not.
"""
