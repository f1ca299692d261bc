"""Use cases: what each command does, as library functions (the CLI and the Python API call these).

Building blocks (io, config, data, runtime, training, models, methods, audit) never import this
package.
"""
