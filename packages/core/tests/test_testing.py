import pytest

from layerwise_core.testing import markdown_python_blocks

MARKDOWN = """# Title

```python
import torch
x = 1
```

Some prose with inline ```python not a fence``` code.

```bash
pip install x
```

1. A list item:

   ```python
   def f():
       return 2

   y = f()
   ```

````markdown
```python
print("inside a markdown block: not run")
```
````

~~~py
z = 3
~~~

```pycon
>>> 1 + 1
```

```Python title="caps"
w = 4
```

```python
```
"""


def test_python_blocks_of_a_hand_written_markdown(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(MARKDOWN)
    blocks = markdown_python_blocks(path)
    # lines counted by hand from MARKDOWN: fences at 3, 16, 29, 37 and 41
    assert blocks == [
        (3, "import torch\nx = 1\n"),
        (16, "def f():\n    return 2\n\ny = f()\n"),
        (29, "z = 3\n"),
        (37, "w = 4\n"),
        (41, ""),
    ]
    namespace: dict = {}
    exec(blocks[1][1], namespace)  # the dedented list-item block is valid Python
    assert namespace["y"] == 2


def test_unclosed_fence_names_its_line(tmp_path):
    path = tmp_path / "doc.md"
    path.write_text("text\n\n```python\nx = 1\n")
    with pytest.raises(ValueError, match=r"doc.md:3: .*never closed"):
        markdown_python_blocks(path)


def test_a_file_without_python_blocks(tmp_path):
    path = tmp_path / "doc.md"
    path.write_text("# Only prose\n\n```bash\nls\n```\n")
    assert markdown_python_blocks(path) == []


def test_not_run_reason_reads_the_marker_right_before_the_fence():
    from layerwise_core.testing import not_run_reason

    lines = [
        "<!-- not-run: needs a CUDA GPU -->",  # 1
        "```python",  # 2: marked, with its reason
        "```",
        "",
        "<!-- not-run -->",  # 5
        "",
        "```python",  # 7: marked (blank lines skipped), no reason
        "```",
        "<!-- not-run: above prose -->",  # 9
        "Some prose.",
        "```python",  # 11: the marker is not the last non-blank line: runs
        "```",
        "```python",  # 13: first line of nothing marked
    ]
    assert not_run_reason(lines, 2) == "needs a CUDA GPU"
    assert not_run_reason(lines, 7) == ""
    assert not_run_reason(lines, 11) is None
    assert not_run_reason(lines, 13) is None
    assert not_run_reason(["```python"], 1) is None
