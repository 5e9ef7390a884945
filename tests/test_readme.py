import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def test_readme_matches_index_notebook():
    "README.md is rendered from nbs/index.ipynb; edit the notebook and run tools/readme.py."
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_readme_links_resolve():
    "Every relative link of the landing page (notebooks, docs pages, images) names a file of the checkout."
    import re
    text = (ROOT/'README.md').read_text(encoding='utf-8')
    links = re.findall(r'\]\((?!https?:|#)([^)\s]+)\)', text)
    assert len(links) > 20
    assert [l for l in links if not (ROOT/l).exists()] == []
