"""IMAGIOPlanning: lesion segmentation on ONNX Runtime (nnU-Net-class models, no PyTorch) and from a seed point."""
