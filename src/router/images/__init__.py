"""The image store: snapshots of directories, content-addressed blobs, and mounts of images.

`store.Images` is the face the server uses; it owns its own argument types (`args`). The store
knows nothing of the engine or of gRPC.
"""
