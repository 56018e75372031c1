"""3-D warping by dense motion fields (face reenactment, dissertation §4.3)."""

from dgm_fast.warp.export import export_onnx, onnx_translation_table
from dgm_fast.warp.functional import grid_sample_3d, keypoint_heatmap_3d, keypoint_warp_3d, sparse_motion_features

__all__ = ["export_onnx", "grid_sample_3d", "keypoint_heatmap_3d", "keypoint_warp_3d", "onnx_translation_table",
           "sparse_motion_features"]
