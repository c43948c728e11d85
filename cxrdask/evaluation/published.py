"""Published per-disease test AUCs on NIH ChestX-ray14, printed beside an NIH store's own (their
splits differ from ours: the report says how), and how to cite them."""

WANG_2017 = {  # Wang et al., "ChestX-ray8", CVPR 2017, Table 4, ResNet-50.
    "Atelectasis": 0.7003, "Cardiomegaly": 0.8100, "Effusion": 0.7585, "Infiltration": 0.6614,
    "Mass": 0.6933, "Nodule": 0.6687, "Pneumonia": 0.6580, "Pneumothorax": 0.7993,
    "Consolidation": 0.7032, "Edema": 0.8052, "Emphysema": 0.8330, "Fibrosis": 0.7859,
    "Pleural_Thickening": 0.6835, "Hernia": 0.8717,
}
CHEXNET_2017 = {  # Rajpurkar et al., "CheXNet", arXiv:1711.05225, Table 1 (DenseNet-121).
    "Atelectasis": 0.8094, "Cardiomegaly": 0.9248, "Effusion": 0.8638, "Infiltration": 0.7345,
    "Mass": 0.8676, "Nodule": 0.7802, "Pneumonia": 0.7680, "Pneumothorax": 0.8887,
    "Consolidation": 0.7901, "Edema": 0.8878, "Emphysema": 0.9371, "Fibrosis": 0.8047,
    "Pleural_Thickening": 0.8062, "Hernia": 0.9164,
}
CITATIONS = {
    "wang2017": "Wang X. et al., ChestX-ray8, CVPR 2017 (ResNet-50, official split)",
    "chexnet": "Rajpurkar P. et al., CheXNet, arXiv:1711.05225 (DenseNet-121, own patient split)",
}

__all__ = ["CHEXNET_2017", "CITATIONS", "WANG_2017"]
