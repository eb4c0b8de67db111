"""IMAGIOLungNav algorithms: airway segmentation, centerline graph, bronchoscopic route (no Qt)."""
