"""Image input: still images (`images.load_image`) and frame sources named by URI
(`video.open_source`: cameras, video files, RTSP, image folders)."""
