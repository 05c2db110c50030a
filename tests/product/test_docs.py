"""The documentation site builds with `mkdocs build --strict`: a link to a missing page or anchor, or a page
left out of the navigation, fails the build (and this test)."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUIET = dict(os.environ, NO_MKDOCS_2_WARNING="1")


def build(folder, site):
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=folder,
                          capture_output=True, text=True, timeout=300, env=QUIET)


def test_the_docs_build_strictly(tmp_path):
    out = build(ROOT, tmp_path / "site")
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "store" / "index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "docs"), copy / "docs")
    shutil.copy(os.path.join(ROOT, "mkdocs.yml"), copy / "mkdocs.yml")
    with open(copy / "docs" / "cli.md", "a", encoding="utf-8") as f:
        f.write("\nSee [the missing page](no-such-page.md).\n")
    out = build(copy, tmp_path / "site")
    assert out.returncode != 0 and "no-such-page.md" in out.stdout + out.stderr


def test_the_readme_links_every_page_and_only_pages_that_exist():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    pages = {name for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md")} - {"index.md"}
    linked = {part.split(")")[0] for part in readme.split("](docs/")[1:]}
    assert pages <= linked, f"pages the README does not link: {sorted(pages - linked)}"
    assert all(os.path.exists(os.path.join(ROOT, "docs", name)) for name in linked)
