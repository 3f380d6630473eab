"""The shipped workflows open in ComfyUI's editor and run as they are.

Every node type exists (this pack's, or core ComfyUI 0.3.64's as its /object_info declares
them), every link joins an output and an input of the same type, every widget value lies in
its declared choices or range, in INPUT_TYPES order, and each API-format file is its UI twin.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from test_nodes import CONTROL_AFTER_GENERATE, PACK, widget_error

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
VIRTUAL_NODES = {"Note", "MarkdownNote"}  # editor-only: never sent to the server
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Combos listing files on the user's disk: any file name is valid in a shipped workflow.
FILE_INPUTS = {("SFVLoader", "checkpoint"), ("LoadImage", "image"), ("LoadVideo", "file")}

# The core nodes these workflows use, as ComfyUI 0.3.64's /object_info declares them (tooltips
# and hidden inputs left out). Checked against the full answer in shared/ when it is there.
CORE_NODES = json.loads(
    r"""{
    "LoadImage": {"input": {"required": {"image": [["example.png"], {"image_upload": true}]}}, "output": ["IMAGE", "MASK"], "output_name": ["IMAGE", "MASK"]},
    "LoadVideo": {"input": {"required": {"file": ["COMBO", {"multiselect": false, "options": [], "video_upload": true}]}}, "output": ["VIDEO"], "output_name": ["VIDEO"]},
    "GetVideoComponents": {"input": {"required": {"video": ["VIDEO", {}]}}, "output": ["IMAGE", "AUDIO", "FLOAT"], "output_name": ["images", "audio", "fps"]},
    "ImageScale": {"input": {"required": {"image": ["IMAGE"], "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]], "width": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}], "height": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}], "crop": [["disabled", "center"]]}}, "output": ["IMAGE"], "output_name": ["IMAGE"]},
    "ImageFromBatch": {"input": {"required": {"image": ["IMAGE"], "batch_index": ["INT", {"default": 0, "min": 0, "max": 4095}], "length": ["INT", {"default": 1, "min": 1, "max": 4096}]}}, "output": ["IMAGE"], "output_name": ["IMAGE"]},
    "SaveAnimatedWEBP": {"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}], "fps": ["FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}], "lossless": ["BOOLEAN", {"default": true}], "quality": ["INT", {"default": 80, "min": 0, "max": 100}], "method": [["default", "fastest", "slowest"]]}}, "output": [], "output_name": []},
    "CreateVideo": {"input": {"required": {"images": ["IMAGE", {}], "fps": ["FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0}]}, "optional": {"audio": ["AUDIO", {}]}}, "output": ["VIDEO"], "output_name": ["VIDEO"]},
    "SaveVideo": {"input": {"required": {"video": ["VIDEO", {}], "filename_prefix": ["STRING", {"default": "video/ComfyUI", "multiline": false}], "format": ["COMBO", {"default": "auto", "multiselect": false, "options": ["auto", "mp4"]}], "codec": ["COMBO", {"default": "auto", "multiselect": false, "options": ["auto", "h264"]}]}}, "output": [], "output_name": []},
    "PreviewImage": {"input": {"required": {"images": ["IMAGE"]}}, "output": [], "output_name": []}
}"""
)


def object_info_file() -> Path | None:
    for candidate in (ROOT / "shared", ROOT.parent / "shared", ROOT.parents[1] / "shared"):  # a clone, or a worktree under wt/
        path = candidate / "comfyui" / "object_info.json"
        if path.is_file():
            return path
    return None


def definition(node_type: str) -> tuple[list[tuple[str, tuple, bool]], list[tuple[str, str]]]:
    """([(input name, spec, optional)] in INPUT_TYPES order, [(output name, type)])."""
    if node_type in PACK.NODE_CLASS_MAPPINGS:
        cls = PACK.NODE_CLASS_MAPPINGS[node_type]
        declared, outputs = cls.INPUT_TYPES(), list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES))
    else:
        assert node_type in CORE_NODES, f"unknown node type {node_type}"
        declared, outputs = CORE_NODES[node_type]["input"], list(zip(CORE_NODES[node_type]["output_name"], CORE_NODES[node_type]["output"]))
    inputs = [(name, tuple(spec), category == "optional") for category in ("required", "optional") for name, spec in declared.get(category, {}).items()]
    return inputs, outputs


def is_widget(spec: tuple) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def options(spec: tuple) -> dict:
    return spec[1] if len(spec) > 1 else {}


def widget_slots(node_type: str) -> list[tuple[str, tuple | None]]:
    """The editor's widgets_values layout: each widget, then the extra value some widgets add."""
    slots = []
    for name, spec, _ in definition(node_type)[0]:
        if is_widget(spec):
            slots.append((name, spec))
            if options(spec).get("control_after_generate"):
                slots.append(("control_after_generate", None))
            if options(spec).get("image_upload") or options(spec).get("video_upload"):
                slots.append(("upload", None))
    return slots


def check_widgets(node_type: str, values: list) -> dict:
    """Check a node's widgets_values; return {widget name: value}."""
    slots = widget_slots(node_type)
    assert len(values) == len(slots), f"{node_type}: {len(values)} widget values for {[name for name, _ in slots]}"
    named = {}
    for (name, spec), value in zip(slots, values):
        if name == "control_after_generate":
            assert value in CONTROL_AFTER_GENERATE, f"{node_type}: {value!r} after the seed"
        elif name == "upload":
            assert value == "image", f"{node_type}: the upload widget's value is {value!r}"
        else:
            if (node_type, name) in FILE_INPUTS:
                assert isinstance(value, str) and "." in value, f"{node_type}.{name}: {value!r} is not a file name"
            else:
                error = widget_error(spec, value)
                assert error is None, f"{node_type}.{name}: {error}"
            named[name] = value
    return named


def to_api(workflow: dict) -> dict:
    """The prompt the editor sends to /prompt for a UI-format workflow."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):  # notes, muted, bypassed
            continue
        inputs = {slot["name"]: [str(links[slot["link"]][1]), links[slot["link"]][2]] for slot in node["inputs"] if slot.get("link") is not None}
        inputs.update(check_widgets(node["type"], node["widgets_values"]))
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_are_the_three_workflows():
    assert [path.stem for path in UI_FILES] == ["sfv_edit_video", "sfv_image_to_video", "sfv_long_video"]


def test_core_excerpt_matches_object_info():
    path = object_info_file()
    if path is None:
        pytest.skip("shared/comfyui/object_info.json is not beside this checkout")
    full = load(path)

    def strip(value):
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items() if key != "tooltip"}
        return [strip(item) for item in value] if isinstance(value, list) else value

    for node_type, excerpt in CORE_NODES.items():
        node = full[node_type]
        assert excerpt == strip({"input": {k: v for k, v in node["input"].items() if k != "hidden"}, "output": node["output"], "output_name": node["output_name"]})
    assert not set(PACK.NODE_CLASS_MAPPINGS) & set(full), "a node type that collides with a core node is dropped by ComfyUI"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda path: path.stem)
def test_ui_workflow_opens_and_is_wired_right(path):
    workflow = load(path)
    assert workflow["version"] == 0.4
    assert {"last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"} <= set(workflow)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]) and workflow["last_node_id"] >= max(nodes)
    links = {link[0]: link for link in workflow["links"]}
    assert len(links) == len(workflow["links"]) and workflow["last_link_id"] >= max(links)

    for link_id, source, source_slot, target, target_slot, link_type in workflow["links"]:
        output, input_ = nodes[source]["outputs"][source_slot], nodes[target]["inputs"][target_slot]
        assert output["type"] == input_["type"] == link_type, f"link {link_id}: {output['type']} -> {input_['type']} as {link_type}"
        assert link_id in output["links"] and input_["link"] == link_id, f"link {link_id} is not recorded on both ends"

    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES:
            continue
        inputs, outputs = definition(node["type"])
        sockets = {name: (spec[0], optional) for name, spec, optional in inputs if not is_widget(spec)}
        for slot in node["inputs"]:
            assert slot["name"] in sockets and slot["type"] == sockets[slot["name"]][0], f"{node['type']} has no input {slot['name']}: {slot['type']}"
            assert slot.get("link") is None or slot["link"] in links
        linked = {slot["name"] for slot in node["inputs"] if slot.get("link") is not None}
        missing = {name for name, (_, optional) in sockets.items() if not optional} - linked
        assert not missing, f"{node['type']} #{node['id']}: required inputs {missing} are not connected"
        assert [(slot["name"], slot["type"]) for slot in node["outputs"]] == outputs, f"{node['type']} outputs"
        for slot in node["outputs"]:
            assert all(link_id in links and links[link_id][1] == node["id"] for link_id in slot.get("links") or [])
        check_widgets(node["type"], node["widgets_values"])


@pytest.mark.parametrize("path", UI_FILES, ids=lambda path: path.stem)
def test_thumbnail_beside_each_workflow(path):
    # The template browser (frontend 1.27) asks for <name>.jpg beside a custom node's <name>.json.
    with Image.open(path.with_suffix(".jpg")) as image:
        assert image.format == "JPEG" and image.width >= 256 and image.height >= 144


@pytest.mark.parametrize("path", UI_FILES, ids=lambda path: path.stem)
def test_api_twin_matches_and_is_valid(path):
    api = load(WORKFLOWS / "api" / f"{path.stem}_api.json")
    assert {key: {"class_type": node["class_type"], "inputs": node["inputs"]} for key, node in api.items()} == to_api(load(path))
    for key, node in api.items():
        inputs, _ = definition(node["class_type"])
        declared = {name: (spec, optional) for name, spec, optional in inputs}
        assert set(node["inputs"]) <= set(declared), f"#{key} {node['class_type']}: undeclared inputs"
        assert {name for name, (_, optional) in declared.items() if not optional} <= set(node["inputs"]), f"#{key}: required inputs missing"
        for name, value in node["inputs"].items():
            spec = declared[name][0]
            if isinstance(value, list) and not is_widget(spec):
                source, index = value
                assert definition(api[source]["class_type"])[1][index][1] == spec[0], f"#{key}.{name} gets the wrong type"
            else:
                assert is_widget(spec), f"#{key}.{name} is a socket but holds {value!r}"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda path: path.stem)
def test_workflow_runs_with_only_svd_safetensors(path, tmp_path, monkeypatch):
    """The loader as shipped (UI and API) needs svd.safetensors and nothing else: no SF-V UNet
    file is selected, since nobody has one until they train it."""
    from test_nodes import RUNTIME, run_node

    from sfv_core.checkpoints import save_single_file
    from sfv_core.models import TINY, build_random_model

    save_single_file(build_random_model(TINY), tmp_path / "checkpoints" / "svd.safetensors")
    monkeypatch.setattr(RUNTIME, "_fallback_models_root", str(tmp_path))
    api = load(WORKFLOWS / "api" / f"{path.stem}_api.json")
    loaders = [node["inputs"] for node in api.values() if node["class_type"] == "SFVLoader"]
    assert loaders and all(inputs["checkpoint"] == "svd.safetensors" and inputs["sfv_unet"] == "none" for inputs in loaders)
    for inputs in loaders:
        (model,) = run_node("SFVLoader", **inputs)
        assert model.model.source.endswith("svd.safetensors")


TITLE_BAR = 30  # the editor draws a node's title above its pos


@pytest.mark.parametrize("path", UI_FILES, ids=lambda path: path.stem)
def test_no_node_covers_another(path):
    boxes = [(node["id"], node["pos"][0], node["pos"][1] - TITLE_BAR, node["pos"][0] + node["size"][0], node["pos"][1] + node["size"][1])
             for node in load(path)["nodes"]]
    overlapping = [(a[0], b[0]) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]]
    assert overlapping == []


def test_execution_order_follows_the_links():
    """The editor's saved order runs every node after the nodes it takes inputs from."""
    for path in UI_FILES:
        workflow = load(path)
        order = {node["id"]: node["order"] for node in workflow["nodes"]}
        assert all(order[source] < order[target] for _, source, _, target, _, _ in workflow["links"]), path.name
