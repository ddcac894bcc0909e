"""GStreamer sources (file, RTSP, V4L2, CSI, test pattern, raw pipeline) yielding RGB frames.

Importing this package is light; GStreamer is initialised on first use (`streams.gst.init`).
"""
