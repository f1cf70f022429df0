import os

import numpy as np

from .base_dataset import LocalDataset


class Cars196(LocalDataset):
    """Stanford Cars (Krause et al., 2013) from the original ``cars_annos.mat``, with the zero-shot split of the DML
    papers: classes 1-98 train, 99-196 test (8,054 / 8,131 images; the file's own train/test flag is ignored).
    Labels are the ``class`` field (1-196).

    (pml's ``Cars196`` reads a Kaggle re-packaging instead.)
    """

    folder_name = "cars196"
    required_files = ("cars_annos.mat", "car_ims")
    url = "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (car_ims.tgz and cars_annos.mat)"
    layout = (
        "  cars196/\n"
        "    cars_annos.mat  (struct array 'annotations': relative_im_path, bbox_x1..bbox_y2, class, test)\n"
        "    car_ims/000001.jpg ..."
    )
    recall_at = (1, 2, 4, 8)

    def generate_split(self):
        import scipy.io  # imported when the dataset is read

        mat = scipy.io.loadmat(os.path.join(self.root, "cars_annos.mat"), squeeze_me=True)
        annotations = np.atleast_1d(mat["annotations"])
        paths = [str(p) for p in np.atleast_1d(annotations["relative_im_path"])]
        classes = np.atleast_1d(annotations["class"]).astype(np.int64)
        keep = {"train": (1, 98), "test": (99, 196), "train+test": (1, 196)}[self.split]
        mask = (classes >= keep[0]) & (classes <= keep[1])
        self.paths = [os.path.join(self.root, p) for p, m in zip(paths, mask) if m]
        self.labels = classes[mask]
