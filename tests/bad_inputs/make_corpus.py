"""Regenerate the bad-input corpus in this folder (the files are committed; tests only read them).

Each sub-folder holds one small dataset with exactly one kind of problem; README.md lists them.
Run from anywhere: python tests/bad_inputs/make_corpus.py
"""
import base64, json, shutil, zlib
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
H, W = 6, 8  # tiny images: 8 wide, 6 high


def img(path, h=H, w=W, fmt=None, value=90):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = (np.arange(h * w).reshape(h, w) * 3 + value).astype(np.uint8)
    Image.fromarray(np.stack([a] * 3, -1)).save(path, format=fmt)


def mask(path, h=H, w=W, value=255):
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((h, w), np.uint8); m[1:3, 2:5] = value
    Image.fromarray(m).save(path)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True); path.write_text(text)


def main():
    for d in HERE.iterdir():
        if d.is_dir(): shutil.rmtree(d)
    # images that cannot be decoded
    img(HERE/'images'/'ok.jpg', fmt='JPEG')
    data = (HERE/'images'/'ok.jpg').read_bytes()
    (HERE/'images'/'truncated.jpg').write_bytes(data[:len(data) // 2])
    (HERE/'images'/'garbage.png').write_bytes(b'\x89PNG\r\n\x1a\nthis is not a png at all')
    # Severstal layout: two good images, one CSV per RLE problem
    sev = HERE/'severstal'
    img(sev/'train_images'/'a.jpg', fmt='JPEG'); img(sev/'train_images'/'b.jpg', fmt='JPEG', value=40)
    head = 'ImageId,ClassId,EncodedPixels\n'
    cases = {
        'odd.csv': 'a.jpg,1,1 3 7\n',
        'past_end.csv': 'a.jpg,1,45 10\n',          # 48 pixels: 45..54 runs past the end
        'overlap.csv': 'a.jpg,3,1 5 4 2\n',
        'unsorted.csv': 'a.jpg,2,20 2 5 3\n',
        'non_integer.csv': 'a.jpg,1,1 2.5\n',
        'zero_length.csv': 'a.jpg,1,3 0\n',
        'zero_start.csv': 'a.jpg,1,0 4\n',
        'negative.csv': 'a.jpg,4,-3 4\n',
        'class_overlap.csv': 'a.jpg,1,1 6\na.jpg,3,4 2\n',
        'bad_class.csv': 'a.jpg,7,1 2\n',
        'missing_image.csv': 'a.jpg,1,1 2\nghost.jpg,2,3 2\n',
        'duplicate_row.csv': 'b.jpg,1,1 2\nb.jpg,1,9 2\n',
        'wrong_fields.csv': 'b.jpg,1\n',
    }
    for name, rows in cases.items(): write(sev/name, head + 'b.jpg,2,10 3\n' + rows)
    write(sev/'bad_header.csv', 'Image,Class,Pixels\na.jpg,1,1 2\n')
    write(sev/'old_form_bad.csv', 'ImageId_ClassId,EncodedPixels\na.jpg_1,1 2\na.jpg_2,5 x\na.jpg_3,\na.jpg_4,\n')
    # Severstal: an image of another size than the others (mask decoded at the common size)
    sz = HERE/'severstal_size'
    img(sz/'train_images'/'a.jpg', fmt='JPEG'); img(sz/'train_images'/'z.jpg', h=H + 2, fmt='JPEG')
    write(sz/'train.csv', head + 'a.jpg,1,1 2\n')
    # Severstal: a corrupt image among good ones
    cs = HERE/'severstal_corrupt'
    img(cs/'train_images'/'a.jpg', fmt='JPEG')
    (cs/'train_images'/'c.jpg').write_bytes((HERE/'images'/'truncated.jpg').read_bytes())
    write(cs/'train.csv', head + 'a.jpg,1,1 2\nc.jpg,2,1 2\n')
    # Severstal: empty (header only, no images)
    write(HERE/'severstal_empty'/'train.csv', head)
    write(HERE/'severstal_empty'/'train_images'/'.gitkeep', '')
    # folders: a mask of another size, orphans, a color mask
    f = HERE/'folder_size'
    img(f/'images'/'a.png'); mask(f/'masks'/'a.png', w=W - 1)
    f = HERE/'folder_orphans'
    img(f/'images'/'a.png'); mask(f/'masks'/'a.png'); img(f/'images'/'no_mask.png'); mask(f/'masks'/'no_image.png')
    f = HERE/'folder_color_mask'
    img(f/'images'/'a.png'); f.joinpath('masks').mkdir(parents=True)
    c = np.zeros((H, W, 3), np.uint8); c[1:3, 2:5] = (255, 0, 0); Image.fromarray(c).save(f/'masks'/'a.png')
    f = HERE/'folder_empty'
    write(f/'images'/'.gitkeep', ''); write(f/'masks'/'.gitkeep', '')
    # Crack500 list files
    cr = HERE/'crack500'
    img(cr/'crop'/'a.jpg', fmt='JPEG'); mask(cr/'crop'/'a.png')
    write(cr/'missing.txt', 'crop/a.jpg crop/a.png\ncrop/b.jpg crop/b.png\n')
    write(cr/'malformed.txt', 'crop/a.jpg crop/a.png\ncrop/a.jpg\n')
    write(cr/'empty.txt', '\n')
    # Supervisely projects, one problem each
    meta = {'classes': [{'title': 'pit', 'shape': 'bitmap', 'color': '#FF0000'},
                        {'title': 'scratch', 'shape': 'polygon', 'color': '#00FF00'}], 'tags': []}
    bm = np.zeros((2, 3), np.uint8); bm[0] = 1
    pim = Image.fromarray(bm, mode='P'); pim.putpalette([0, 0, 0, 255, 255, 255])
    import io; buf = io.BytesIO(); pim.save(buf, format='PNG', transparency=0)
    good_bitmap = {'data': base64.b64encode(zlib.compress(buf.getvalue())).decode(), 'origin': [1, 2]}
    def obj(**kw): return {'classTitle': 'pit', 'geometryType': 'bitmap', 'bitmap': good_bitmap, **kw}
    size = {'height': H, 'width': W}
    sly = {
        'sly_missing_size': {'objects': [obj()]},
        'sly_missing_objects': {'size': size},
        'sly_missing_class_title': {'size': size, 'objects': [{'geometryType': 'bitmap', 'bitmap': good_bitmap}]},
        'sly_unknown_class': {'size': size, 'objects': [obj(classTitle='dent')]},
        'sly_missing_bitmap_data': {'size': size, 'objects': [obj(bitmap={'origin': [0, 0]})]},
        'sly_bad_polygon': {'size': size, 'objects': [{'classTitle': 'scratch', 'geometryType': 'polygon', 'points': {'exterior': [[1, 1], [2, 2]]}}]},
        'sly_undecodable_bitmap': {'size': size, 'objects': [obj(bitmap={'data': base64.b64encode(b'not zlib').decode(), 'origin': [0, 0]})]},
        'sly_bitmap_outside': {'size': size, 'objects': [obj(bitmap={**good_bitmap, 'origin': [W - 1, 0]})]},
        'sly_size_mismatch': {'size': {'height': H + 1, 'width': W}, 'objects': [obj()]},
        'sly_invalid_json': None,
    }
    for name, ann in sly.items():
        p = HERE/name
        write(p/'meta.json', json.dumps(meta))
        img(p/'ds'/'img'/'a.png')
        write(p/'ds'/'ann'/'a.png.json', '{"size": {"height": 6, ' if ann is None else json.dumps(ann))
    p = HERE/'sly_missing_meta'; img(p/'ds'/'img'/'a.png'); write(p/'ds'/'ann'/'a.png.json', json.dumps({'size': size, 'objects': []}))
    p = HERE/'sly_missing_image'; write(p/'meta.json', json.dumps(meta)); write(p/'ds'/'ann'/'a.png.json', json.dumps({'size': size, 'objects': []}))
    write(p/'ds'/'img'/'.gitkeep', '')


if __name__ == '__main__':
    main()
