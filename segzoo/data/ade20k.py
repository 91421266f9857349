"""ADE20K scene parsing (SceneParsing challenge 2016, 150 classes).

B. Zhou, H. Zhao, X. Puig, S. Fidler, A. Barriuso, A. Torralba, "Scene Parsing through ADE20K Dataset",
CVPR 2017.
"""
import os

from .base import IGNORE_LABEL, SegmentationDataset, default_root, make_label_lut, map_labels, read_label_image

__all__ = ['ADE20K_CLASSES', 'ADE20KSegmentation']

# Training id -> name (objectInfo150.txt order; GluonCV's spelling).
ADE20K_CLASSES = (
    'wall', 'building, edifice', 'sky', 'floor, flooring', 'tree', 'ceiling', 'road, route', 'bed',
    'windowpane, window', 'grass', 'cabinet', 'sidewalk, pavement',
    'person, individual, someone, somebody, mortal, soul', 'earth, ground', 'door, double door', 'table',
    'mountain, mount', 'plant, flora, plant life', 'curtain, drape, drapery, mantle, pall', 'chair',
    'car, auto, automobile, machine, motorcar', 'water', 'painting, picture', 'sofa, couch, lounge', 'shelf',
    'house', 'sea', 'mirror', 'rug, carpet, carpeting', 'field', 'armchair', 'seat', 'fence, fencing', 'desk',
    'rock, stone', 'wardrobe, closet, press', 'lamp', 'bathtub, bathing tub, bath, tub', 'railing, rail', 'cushion',
    'base, pedestal, stand', 'box', 'column, pillar', 'signboard, sign', 'chest of drawers, chest, bureau, dresser',
    'counter', 'sand', 'sink', 'skyscraper', 'fireplace, hearth, open fireplace', 'refrigerator, icebox',
    'grandstand, covered stand', 'path', 'stairs, steps', 'runway', 'case, display case, showcase, vitrine',
    'pool table, billiard table, snooker table', 'pillow', 'screen door, screen', 'stairway, staircase', 'river',
    'bridge, span', 'bookcase', 'blind, screen', 'coffee table, cocktail table',
    'toilet, can, commode, crapper, pot, potty, stool, throne', 'flower', 'book', 'hill', 'bench', 'countertop',
    'stove, kitchen stove, range, kitchen range, cooking stove', 'palm, palm tree', 'kitchen island',
    'computer, computing machine, computing device, data processor, electronic computer, information processing system',
    'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel, hut, hutch, shack, shanty',
    'bus, autobus, coach, charabanc, double-decker, jitney, motorbus, motorcoach, omnibus, passenger vehicle',
    'towel', 'light, light source', 'truck, motortruck', 'tower', 'chandelier, pendant, pendent',
    'awning, sunshade, sunblind', 'streetlight, street lamp', 'booth, cubicle, stall, kiosk',
    'television receiver, television, television set, tv, tv set, idiot box, boob tube, telly, goggle box',
    'airplane, aeroplane, plane', 'dirt track', 'apparel, wearing apparel, dress, clothes', 'pole',
    'land, ground, soil', 'bannister, banister, balustrade, balusters, handrail',
    'escalator, moving staircase, moving stairway', 'ottoman, pouf, pouffe, puff, hassock', 'bottle',
    'buffet, counter, sideboard', 'poster, posting, placard, notice, bill, card', 'stage', 'van', 'ship', 'fountain',
    'conveyer belt, conveyor belt, conveyer, conveyor, transporter', 'canopy',
    'washer, automatic washer, washing machine', 'plaything, toy', 'swimming pool, swimming bath, natatorium',
    'stool', 'barrel, cask', 'basket, handbasket', 'waterfall, falls', 'tent, collapsible shelter', 'bag',
    'minibike, motorbike', 'cradle', 'oven', 'ball', 'food, solid food', 'step, stair', 'tank, storage tank',
    'trade name, brand name, brand, marque', 'microwave, microwave oven', 'pot, flowerpot',
    'animal, animate being, beast, brute, creature, fauna', 'bicycle, bike, wheel, cycle', 'lake',
    'dishwasher, dish washer, dishwashing machine', 'screen, silver screen, projection screen', 'blanket, cover',
    'sculpture', 'hood, exhaust hood', 'sconce', 'vase', 'traffic light, traffic signal, stoplight', 'tray',
    'ashcan, trash can, garbage can, wastebin, ash bin, ash-bin, ashbin, dustbin, trash barrel, trash bin', 'fan',
    'pier, wharf, wharfage, dock', 'crt screen', 'plate', 'monitor, monitoring device',
    'bulletin board, notice board', 'shower', 'radiator', 'glass, drinking glass', 'clock', 'flag',
)

# ADE masks: 0 = other/unlabelled (ignored), 1..150 = classes -> training ids 0..149.
ADE20K_LABEL_LUT = make_label_lut({0: IGNORE_LABEL, **{k: k - 1 for k in range(1, len(ADE20K_CLASSES) + 1)}})


class ADE20KSegmentation(SegmentationDataset):
    """ADE20K, ``ade20k`` (GluonCV's ``ADE20KSegmentation``).

    Parameters
    ----------
    root : str or None
        Folder holding ``ADEChallengeData2016/`` (and ``release_test/`` for split ``'test'``); default
        ``$MXNET_HOME/datasets/ade`` (``~/.mxnet/datasets/ade``).
    split : str
        ``'train'`` (``images/training``, 20,210 images), ``'val'`` (``images/validation``, 2,000 images) or
        ``'test'`` (``release_test/testing``, 3,352 images without masks; mode ``'test'`` only). Every ``.jpg``
        must have its ``.png`` mask (GluonCV skips unpaired images with a print; segzoo raises). Files are sorted
        by name (GluonCV keeps the file system's order).
    mode, transform, base_size, crop_size, gluoncv_mask_pad, transforms
        See :class:`segzoo.data.base.SegmentationDataset`.

    Notes
    -----
    Mask value v becomes v - 1, so 0 (other) is ignored; predictions are therefore offset by one from the
    file values: ``pred_offset = 1`` (add it to a prediction to write an ADE-format PNG).
    """

    BASE_DIR = 'ADEChallengeData2016'
    NUM_CLASS = 150
    CLASSES = ADE20K_CLASSES
    LABEL_LUT = ADE20K_LABEL_LUT
    pred_offset = 1
    NAME = 'ade20k'
    SPLITS = ('train', 'val', 'test')
    SUBDIRS = {'train': 'training', 'val': 'validation'}
    LAYOUT = ('  ADEChallengeData2016/images/{training,validation}/<name>.jpg\n'
              '  ADEChallengeData2016/annotations/{training,validation}/<name>.png\n'
              '  release_test/testing/<name>.jpg (split test only)')
    PREPARE = 'python scripts/datasets/ade20k.py'

    def __init__(self, root=None, split='train', mode=None, transform=None, **kwargs):
        super().__init__(default_root('ade') if root is None else root, split, mode, transform, **kwargs)
        if split == 'test':
            if self.mode != 'test':
                raise ValueError("ade20k split 'test' has no masks: use mode='test'")
            folder = self._require(os.path.join(self.root, 'release_test', 'testing'), 'test image folder')
            self.images = _list_files(folder, '.jpg')
            return
        base = self._require(os.path.join(self.root, self.BASE_DIR), 'ADEChallengeData2016 folder')
        image_dir = self._require(os.path.join(base, 'images', self.SUBDIRS[split]), 'image folder')
        self.images = _list_files(image_dir, '.jpg')
        if not self.images:
            raise self._missing(os.path.join(image_dir, '*.jpg'), 'images')
        if self.mode != 'test':
            mask_dir = os.path.join(base, 'annotations', self.SUBDIRS[split])
            self.masks = [os.path.join(mask_dir, os.path.basename(p)[:-4] + '.png') for p in self.images]
            self._check_files(self.masks, 'masks')

    def _read_mask(self, index):
        path = self.masks[index]
        return map_labels(read_label_image(path), self.LABEL_LUT, path)


def _list_files(folder, suffix):
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder)) if name.endswith(suffix)]
