"""The bad-input corpus (tests/bad_inputs/, made by make_corpus.py): each case raises one DataError naming the file
or row and the problem; with skip_bad=True the bad samples are skipped, warned about and listed in ds.skipped."""
import warnings
from pathlib import Path

import pytest

from defect_sam.core.errors import DataError
from defect_sam.data.load import load_dataset
from defect_sam.data.formats import read_image, read_mask
from defect_sam.data.formats import SkippedSamplesWarning

BAD = Path(__file__).resolve().parent/'bad_inputs'


def sev(csv): return lambda **kw: load_dataset('severstal', BAD/'severstal', csv=csv, **kw)
def sly(name): return lambda **kw: load_dataset('supervisely', BAD/name, **kw)


# (case id, loader(**kw), substrings the message must contain: the file/row and the problem)
CASES = [
    # corrupt or truncated images
    ('truncated_image', lambda **kw: read_image(BAD/'images'/'truncated.jpg'), ['truncated.jpg', 'cannot read image']),
    ('garbage_image', lambda **kw: read_image(BAD/'images'/'garbage.png'), ['garbage.png', 'cannot read image']),
    ('corrupt_image_in_dataset', lambda **kw: load_dataset('severstal', BAD/'severstal_corrupt', validate=True, **kw),
     ['c.jpg', 'cannot read image']),
    # a mask whose size differs from its image
    ('folder_mask_size', lambda **kw: load_dataset('folder', BAD/'folder_size', validate=True, **kw),
     ['masks/a.png', 'mask size 7x6 (WxH) differs from its image', 'images/a.png']),
    ('severstal_image_size', lambda **kw: load_dataset('severstal', BAD/'severstal_size', validate=True, **kw),
     ['z.jpg', 'mask size differs from the image']),
    ('supervisely_size', lambda **kw: load_dataset('supervisely', BAD/'sly_size_mismatch', validate=True, **kw),
     ['a.png.json', 'annotation size 8x7 (WxH) differs from its image']),
    ('color_mask', lambda **kw: load_dataset('folder', BAD/'folder_color_mask', validate=True, **kw),
     ['masks/a.png', 'RGB mask with differing channels']),
    # malformed RLE
    ('rle_odd', sev('odd.csv'), ['odd.csv line 3 (ImageId a.jpg, ClassId 1)', 'odd number of RLE values (3)']),
    ('rle_past_end', sev('past_end.csv'), ['past_end.csv line 3', 'run 1 (start 45, length 10) runs past the image end']),
    ('rle_overlap', sev('overlap.csv'), ['overlap.csv line 3', 'run 2 (start 4, length 2) overlaps the previous run']),
    ('rle_unsorted', sev('unsorted.csv'), ['unsorted.csv line 3', 'run 2 (start 5, length 3) starts before the previous run']),
    ('rle_non_integer', sev('non_integer.csv'), ['non_integer.csv line 3', "RLE value 2 is '2.5', not an integer"]),
    ('rle_zero_length', sev('zero_length.csv'), ['zero_length.csv line 3', 'length below 1']),
    ('rle_zero_start', sev('zero_start.csv'), ['zero_start.csv line 3', 'start below 1']),
    ('rle_negative', sev('negative.csv'), ['negative.csv line 3', 'start below 1']),
    ('rle_classes_overlap', sev('class_overlap.csv'), ['class_overlap.csv lines 3 and 4', 'classes 1 and 3 cover the same pixels']),
    ('csv_bad_class', sev('bad_class.csv'), ['bad_class.csv line 3', 'class id in 1..4']),
    ('csv_duplicate_row', sev('duplicate_row.csv'), ['duplicate_row.csv line 4', 'duplicate row', 'already on line 3']),
    ('csv_wrong_fields', sev('wrong_fields.csv'), ['wrong_fields.csv line 3', '2 fields, expected 3']),
    ('csv_bad_header', sev('bad_header.csv'), ['bad_header.csv line 1', "expected 'ImageId,ClassId,EncodedPixels'"]),
    ('csv_old_form', sev('old_form_bad.csv'), ['old_form_bad.csv line 3 (ImageId a.jpg, ClassId 2)', "'x', not an integer"]),
    # Supervisely JSON with missing fields or an undecodable bitmap
    ('sly_missing_size', sly('sly_missing_size'), ['a.png.json', "missing or bad 'size'"]),
    ('sly_missing_objects', sly('sly_missing_objects'), ['a.png.json', "missing 'objects' list"]),
    ('sly_missing_class_title', sly('sly_missing_class_title'), ['a.png.json object 1', "missing 'classTitle'"]),
    ('sly_unknown_class', sly('sly_unknown_class'), ['a.png.json object 1', "class 'dent' is not in meta.json"]),
    ('sly_missing_bitmap_data', sly('sly_missing_bitmap_data'), ['a.png.json object 1 (pit)', "without 'bitmap'"]),
    ('sly_bad_polygon', sly('sly_bad_polygon'), ['a.png.json object 1 (scratch)', 'at least 3 [x, y] pairs']),
    ('sly_undecodable_bitmap', lambda **kw: load_dataset('supervisely', BAD/'sly_undecodable_bitmap', validate=True, **kw),
     ['a.png.json object 1 (pit)', 'undecodable bitmap']),
    ('sly_bitmap_outside', lambda **kw: load_dataset('supervisely', BAD/'sly_bitmap_outside', validate=True, **kw),
     ['a.png.json object 1 (pit)', 'extends past the 8x6 (WxH) image']),
    ('sly_invalid_json', sly('sly_invalid_json'), ['a.png.json', 'invalid JSON']),
    ('sly_missing_meta', sly('sly_missing_meta'), ['meta.json', 'not found']),
    ('sly_missing_image', sly('sly_missing_image'), ['a.png.json', 'its image', 'not found']),
    # a list file naming a missing file
    ('list_missing_file', lambda **kw: load_dataset('crack500', BAD/'crack500', split='missing', **kw),
     ['missing.txt line 2', 'crop/b.jpg and', 'crop/b.png not found']),
    ('list_malformed', lambda **kw: load_dataset('crack500', BAD/'crack500', split='malformed', **kw),
     ['malformed.txt line 2', "expected '<image> <mask>'"]),
    ('csv_missing_image', sev('missing_image.csv'), ['missing_image.csv line 4', 'ghost.jpg not found']),
    ('folder_orphan', lambda **kw: load_dataset('folder', BAD/'folder_orphans', **kw), ['no_mask.png', 'image has no mask']),
    # empty datasets
    ('empty_severstal', lambda **kw: load_dataset('severstal', BAD/'severstal_empty', **kw), ['severstal_empty', 'empty dataset']),
    ('empty_folder', lambda **kw: load_dataset('folder', BAD/'folder_empty', **kw), ['folder_empty', 'empty dataset']),
    ('empty_list', lambda **kw: load_dataset('crack500', BAD/'crack500', split='empty', **kw), ['empty.txt', 'empty dataset']),
]


@pytest.mark.parametrize('case,load,needles', CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_data_error_naming_file(case, load, needles):
    with pytest.raises(DataError) as e: load()
    assert isinstance(e.value, ValueError)
    msg = str(e.value)
    for n in needles: assert n in msg, f"{case}: {n!r} not in {msg!r}"


# cases where other samples are good: skip_bad keeps them, warns and lists the bad ones
SKIPPABLE = [
    ('corrupt_image_in_dataset', lambda **kw: load_dataset('severstal', BAD/'severstal_corrupt', **kw), ['a.jpg'], 'c.jpg'),
    ('severstal_image_size', lambda **kw: load_dataset('severstal', BAD/'severstal_size', **kw), ['a.jpg'], 'z.jpg'),
    ('rle_odd', sev('odd.csv'), ['b.jpg'], 'odd.csv line 3'),
    ('rle_classes_overlap', sev('class_overlap.csv'), ['b.jpg'], 'class_overlap.csv line 4'),
    ('csv_missing_image', sev('missing_image.csv'), ['a.jpg', 'b.jpg'], 'ghost.jpg'),
    ('csv_old_form', sev('old_form_bad.csv'), ['b.jpg'], 'old_form_bad.csv line 3'),
    ('list_missing_file', lambda **kw: load_dataset('crack500', BAD/'crack500', split='missing', **kw), ['a'], 'missing.txt line 2'),
    ('folder_orphan', lambda **kw: load_dataset('folder', BAD/'folder_orphans', **kw), ['a'], 'no_image.png'),
]


@pytest.mark.parametrize('case,load,kept,named', SKIPPABLE, ids=[c[0] for c in SKIPPABLE])
def test_skip_bad_reports_what_it_skipped(case, load, kept, named):
    with pytest.warns(SkippedSamplesWarning) as w: ds = load(skip_bad=True)
    assert ds.ids == kept
    assert ds.skipped and all(isinstance(k, str) and isinstance(r, str) for k, r in ds.skipped)
    assert any(named in k or named in r for k, r in ds.skipped), ds.skipped
    assert named in str(w[0].message)
    for s in ds: assert s.image.shape[:2] == s.mask.shape      # what is left loads


def test_all_bad_is_an_error_not_an_empty_dataset():
    with pytest.raises(DataError, match='all samples are bad'), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        load_dataset('supervisely', BAD/'sly_unknown_class', skip_bad=True)


def test_lazy_decode_error_names_file():
    "Without validate, a corrupt image surfaces when its sample is read, still as a DataError naming the file."
    ds = load_dataset('severstal', BAD/'severstal_corrupt')
    ds['a.jpg']
    with pytest.raises(DataError, match='c.jpg: cannot read image'): ds['c.jpg']


def test_read_mask_errors_name_file():
    with pytest.raises(DataError, match='truncated.jpg'): read_mask(BAD/'images'/'truncated.jpg')
