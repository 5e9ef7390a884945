"""download_severstal without network: no credentials is a clear error (checked before kaggle is imported); failures of
the Kaggle API become DownloadError; a fake API shows the unpacking. No test here can reach the network."""
import shutil
import socket
import sys
import types
import zipfile
from pathlib import Path

import pytest

from defect_sam.core.errors import DataError
from defect_sam.data.load import DownloadError, download_severstal, kaggle_credentials, load_dataset
from defect_sam.data.formats import write_severstal


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    "No credentials anywhere, and any attempt to open a socket fails the test."
    for k in list(__import__('os').environ):
        if k.startswith('KAGGLE_'): monkeypatch.delenv(k)
    monkeypatch.setenv('HOME', str(tmp_path/'home'))
    monkeypatch.setenv('XDG_CONFIG_HOME', str(tmp_path/'xdg'))
    monkeypatch.setenv('KAGGLE_CONFIG_DIR', str(tmp_path/'kaggle_cfg'))
    monkeypatch.setenv('DEFECT_SAM_CACHE', str(tmp_path/'cache'))
    def no_network(*a, **k): raise AssertionError('a test tried to open a network connection')
    monkeypatch.setattr(socket.socket, 'connect', no_network)
    monkeypatch.setattr(socket, 'create_connection', no_network)


def test_no_credentials_is_a_clear_error_without_importing_kaggle(tmp_path):
    had_kaggle = 'kaggle' in sys.modules
    assert kaggle_credentials() is None
    with pytest.raises(DownloadError) as e: download_severstal(tmp_path/'sev')
    msg = str(e.value)
    assert isinstance(e.value, DataError)
    assert str(tmp_path/'kaggle_cfg'/'kaggle.json') in msg                          # where to put kaggle.json
    assert 'https://www.kaggle.com/settings' in msg                                 # how to get a token
    assert 'competitions/severstal-steel-defect-detection/data' in msg              # how to get the data by hand
    assert str(tmp_path/'sev'/'train.csv') in msg
    if not had_kaggle: assert 'kaggle' not in sys.modules                           # the package (which prints) was not imported


def test_credential_locations(tmp_path, monkeypatch):
    (tmp_path/'kaggle_cfg').mkdir(); (tmp_path/'kaggle_cfg'/'kaggle.json').write_text('{"username": "u", "key": "k"}')
    assert kaggle_credentials() == str(tmp_path/'kaggle_cfg'/'kaggle.json')
    (tmp_path/'kaggle_cfg'/'kaggle.json').unlink()
    monkeypatch.setenv('KAGGLE_USERNAME', 'u'); monkeypatch.setenv('KAGGLE_KEY', 'k')
    assert 'KAGGLE_USERNAME' in kaggle_credentials()


def _fake_kaggle(monkeypatch, authenticate):
    "Replace the kaggle package by a stub whose KaggleApi.authenticate behaves as given."
    mod = types.ModuleType('kaggle.api.kaggle_api_extended')
    class KaggleApi:
        def authenticate(self): authenticate()
    mod.KaggleApi = KaggleApi
    for name in ('kaggle', 'kaggle.api'): monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, 'kaggle.api.kaggle_api_extended', mod)


def test_failed_authentication(tmp_path, monkeypatch):
    monkeypatch.setenv('KAGGLE_USERNAME', 'u'); monkeypatch.setenv('KAGGLE_KEY', 'wrong')
    def auth():
        print('Authentication required to call the Kaggle API.')   # what the real package prints before exit(1)
        raise SystemExit(1)
    _fake_kaggle(monkeypatch, auth)
    with pytest.raises(DownloadError, match='Kaggle authentication failed .*KAGGLE_USERNAME.*unzip it into'):
        download_severstal(tmp_path/'sev')


class Api:
    def __init__(self, write=None, error=None): self.write, self.error, self.calls = write, error, 0
    def competition_download_files(self, competition, path, quiet):
        self.calls += 1
        if self.error: raise self.error
        self.write(Path(path)/f'{competition}.zip')


def _layout_zip(tmp_path):
    src = write_severstal(load_dataset('synthetic', n_images=3, seed=0, height=32, width=64), tmp_path/'src')
    return lambda z: shutil.make_archive(str(z.with_suffix('')), 'zip', src)


def test_download_errors_are_download_errors(tmp_path):
    root = tmp_path/'sev'
    with pytest.raises(DownloadError, match="could not download competition 'severstal-steel-defect-detection' .*ConnectionError"):
        download_severstal(root, api=Api(error=ConnectionError('no route to host')))
    with pytest.raises(DownloadError, match='rules'): download_severstal(root, api=Api(error=RuntimeError('403 Forbidden')))
    with pytest.raises(DownloadError, match='cannot unzip'): download_severstal(root, api=Api(write=lambda z: z.write_bytes(b'PK broken')))
    def no_csv(z):
        with zipfile.ZipFile(z, 'w') as f: f.writestr('sample_submission.csv', 'x')
    with pytest.raises(DownloadError, match='has no train.csv'): download_severstal(root, api=Api(write=no_csv))
    assert not list(root.glob('.download-*')) and not (root/'train.csv').exists()      # nothing half-done left behind


def test_download_unpacks_and_is_idempotent(tmp_path):
    api = Api(write=_layout_zip(tmp_path))
    root = download_severstal(tmp_path/'sev', api=api)
    assert (root/'train.csv').is_file() and len(list((root/'train_images').iterdir())) == 3
    assert not list(root.glob('.download-*'))
    assert len(load_dataset('severstal', root)) == 3
    download_severstal(root, api=api)
    assert api.calls == 1                                                               # present: not downloaded again
    download_severstal(root, api=api, force=True)
    assert api.calls == 2 and len(load_dataset('severstal', root)) == 3


def test_default_root_is_the_cache(tmp_path):
    root = download_severstal(api=Api(write=_layout_zip(tmp_path)))
    assert root == tmp_path/'cache'/'severstal'
    assert len(load_dataset('severstal')) == 3                                          # the default root of the reader
