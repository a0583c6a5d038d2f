"""The explorer in a real browser: the real server (uvicorn, a free loopback port) and Debian's
headless Chromium driven by Selenium with the system driver, nothing downloaded. Skips, saying
why, only where the browser or its driver is not installed (.ci/run installs both)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

pytest.importorskip("fastapi", reason="the explorer needs the serve extra (pip install -e '.[test]')")
from atlas_data import shapes_site
from browser import chromium, needs_chromium
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from deconvnet.loading import load_model
from deconvnet.serve import Explorer
from deconvnet.serve.app import BackgroundServer, create_app
from deconvnet.shapes import render

pytestmark = needs_chromium
LAYER = "features.8"

# How much a loaded <img> or <canvas> varies: 0 for a blank (uniform) picture, -1 while not loaded.
CONTRAST = """
const el = arguments[0];
if (el.tagName === "IMG" && (!el.complete || el.naturalWidth === 0)) return -1;
const canvas = document.createElement("canvas");
canvas.width = el.naturalWidth || el.width; canvas.height = el.naturalHeight || el.height;
const context = canvas.getContext("2d");
context.drawImage(el, 0, 0);
const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
let low = 765, high = 0;
for (let i = 0; i < data.length; i += 4) { const v = data[i] + data[i + 1] + data[i + 2]; low = Math.min(low, v); high = Math.max(high, v); }
return high - low;
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    site, _ = shapes_site(tmp_path_factory, [LAYER], images=8)
    explorer = Explorer(load_model("shapes"), name="shapes", atlas=site, photos=[])
    with BackgroundServer(create_app(explorer)) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    driver = chromium(1300)
    yield driver
    driver.quit()


def wait(driver, condition, what: str, timeout: float = 60):
    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message=what)


def shown(driver, element_id: str) -> None:
    """Wait until the picture loads, then check it is not blank."""
    element = driver.find_element(By.ID, element_id)
    wait(driver, lambda d: element.is_displayed() and d.execute_script(CONTRAST, element) >= 0, f"{element_id} loads")
    assert driver.execute_script(CONTRAST, element) > 0, f"{element_id} is blank"


def no_console_errors(driver) -> None:
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    assert "error" not in driver.find_element(By.ID, "status").get_attribute("class")


def title(driver) -> str:
    return driver.find_element(By.ID, "view-title").text


def test_upload_click_switch_pick_occlude_and_share(browser, server, tmp_path):
    photo = tmp_path / "star.png"
    next(render(3, i) for i in range(100) if render(3, i).label == 5).image.save(photo)
    browser.get(server.url + "/")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#layer option")) > 0, "the model's layers")
    assert "Upload an image" in browser.find_element(By.ID, "status").text

    # 1. upload: the input, the top-5, and the top class's reconstruction
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait(browser, lambda d: title(d).startswith("Class 5: star"), "the top class after the upload")
    shown(browser, "input")
    shown(browser, "projection")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#top button")) == 5

    # 2. another class, then the rule switched in place
    browser.find_element(By.CSS_SELECTOR, '#top button[data-class="0"]').click()
    wait(browser, lambda d: title(d) == "Class 0: circle", "class 0")
    shown(browser, "projection")
    before = browser.find_element(By.ID, "projection").get_attribute("src")
    browser.find_element(By.CSS_SELECTOR, 'input[name=rule][value="guided"]').click()
    wait(browser, lambda d: "guided reconstruction" in d.find_element(By.ID, "projection-caption").text, "guided")
    shown(browser, "projection")
    assert browser.find_element(By.ID, "projection").get_attribute("src") != before

    # 3. a layer, its channels by strength, the strongest channel, a position of its map, the arrows
    Select(browser.find_element(By.ID, "layer")).select_by_value(LAYER)
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid .cell")) == 32, "32 channel thumbnails")
    cells = browser.find_elements(By.CSS_SELECTOR, "#grid .cell canvas")
    assert sum(browser.execute_script(CONTRAST, c) > 0 for c in cells) >= 8
    Select(browser.find_element(By.ID, "sort")).select_by_value("strength")
    values = [float(c.get_attribute("data-value")) for c in browser.find_elements(By.CSS_SELECTOR, "#grid .cell")]
    assert values == sorted(values, reverse=True)
    strongest = browser.find_element(By.CSS_SELECTOR, "#grid .cell")
    channel = strongest.get_attribute("data-channel")
    strongest.click()
    wait(browser, lambda d: title(d).startswith(f"{LAYER}, channel {channel}, unit"), "the strongest unit")
    for picture in ("projection", "patch", "map"):
        shown(browser, picture)
    assert browser.find_element(By.ID, "box").is_displayed()
    with_field = browser.find_element(By.ID, "projection-caption").text
    assert "14×14 px receptive field" in with_field
    # Click the map at the strongest unit's square (224 px for 32 units: 7 px each, from the centre): the
    # same unit comes back, now as a clicked position in the URL.
    top_row, top_col = (int(v) for v in title(browser).rsplit("(", 1)[1].rstrip(")").split(", "))
    x, y = top_col * 7 + 3 - 112, top_row * 7 + 3 - 112
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", browser.find_element(By.ID, "map"))
    ActionChains(browser).move_to_element_with_offset(browser.find_element(By.ID, "map"), x, y).click().perform()
    wait(browser, lambda d: "unit" in parse_qs(urlparse(d.current_url).query), "a clicked map position")
    assert parse_qs(urlparse(browser.current_url).query)["unit"] == [f"{top_row},{top_col}"]
    assert title(browser) == f"{LAYER}, channel {channel}, unit ({top_row}, {top_col})"
    assert "This unit: activation" in browser.find_element(By.ID, "view-caption").text
    shown(browser, "projection")
    ActionChains(browser).move_to_element_with_offset(browser.find_element(By.ID, "map"), x, y + 7).click().perform()
    wait(browser, lambda d: title(d) == f"{LAYER}, channel {channel}, unit ({top_row + 1}, {top_col})", "the unit below")

    # the atlas beside it: the channel's top units from the dataset, linked to its page
    wait(browser, lambda d: d.find_element(By.ID, "atlas-panel").is_displayed(), "the atlas panel")
    wait(browser, lambda d: d.execute_script(
        "const all = Array.from(document.querySelectorAll('#atlas-units img'));"
        "return all.length > 0 && all.every(i => i.complete && i.naturalWidth > 0);"), "the atlas's pictures")
    assert f"/{channel}.html" in browser.find_element(By.ID, "atlas-link").get_attribute("href")

    grid = browser.find_element(By.ID, "grid")
    second = browser.find_elements(By.CSS_SELECTOR, "#grid .cell")[1].get_attribute("data-channel")
    grid.find_elements(By.CSS_SELECTOR, ".cell")[0].send_keys(Keys.ARROW_RIGHT)
    wait(browser, lambda d: title(d).startswith(f"{LAYER}, channel {second}, unit"), "the arrow key's channel")
    shown(browser, "projection")

    # 4. a small occlusion: progress, then the panels; hovering reads a position out
    size = browser.find_element(By.ID, "occ-size")
    size.clear()
    size.send_keys("32")
    stride = browser.find_element(By.ID, "occ-stride")
    stride.clear()
    stride.send_keys("16")
    browser.find_element(By.CSS_SELECTOR, "#occlusion-form button").click()
    wait(browser, lambda d: d.find_element(By.ID, "occ-result").is_displayed(), "the occlusion panels")
    for panel in ("occ-activation", "occ-probability", "occ-projection"):
        shown(browser, panel)
    probability = browser.find_element(By.ID, "occ-probability")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", probability)
    ActionChains(browser).move_to_element(probability).perform()
    assert "occluder at (16, 16)" in browser.find_element(By.ID, "occ-readout").text  # the middle of a 3x3 grid
    no_console_errors(browser)

    # 5. the URL restores the view in a fresh page
    shared = browser.current_url
    assert "rule=guided" in shared and f"layer={LAYER}" in shared and "occlusion=32%2C16" in shared
    shown_title = title(browser)
    browser.get("about:blank")
    browser.get(shared)
    wait(browser, lambda d: title(d) == shown_title, "the shared view")
    shown(browser, "projection")
    wait(browser, lambda d: d.find_element(By.ID, "occ-result").is_displayed(), "the shared occlusion")
    assert browser.find_element(By.CSS_SELECTOR, 'input[name=rule][value="guided"]').is_selected()
    assert Select(browser.find_element(By.ID, "sort")).first_selected_option.get_attribute("value") == "strength"
    no_console_errors(browser)


def test_the_api_docs_open_offline(browser, server):
    """/docs is Swagger UI from the swagger-ui-bundle wheel: nothing fetched from elsewhere (these
    machines have no internet), every API call listed."""
    browser.get(server.url + "/docs")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) > 0, "Swagger UI's operations")
    summaries = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")]
    assert "/api/images/{image}/layers/{layer}/channels/{channel}" in " ".join(summaries).replace("\u200b", "")
    assert len(summaries) == 12  # with segmentation's /api/images/{image}/pixels/{row}/{col}
    assert "/api/images/{image}/pixels/{row}/{col}" in " ".join(summaries).replace("\u200b", "")
    sources = browser.execute_script("return Array.from(document.querySelectorAll('script[src], link[href]'))"
                                     ".map(e => e.src || e.href)")
    assert sources and all(source.startswith(server.url) for source in sources)
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []


def test_a_fine_tuned_checkpoint_shows_its_labels_and_an_upright_phone_photo(browser, tmp_path):
    # deconvnet serve --model resnet18 --checkpoint ft.ckpt --labels labels.txt --input-size 64
    import torch
    import torchvision
    from PIL import Image

    from deconvnet.cli import build_parser
    from deconvnet.commands import explorer_for

    torch.manual_seed(0)
    names = ["ok", "scratch", "dent", "stain"]
    weights = torchvision.models.resnet18(num_classes=4).state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in weights.items()}}, tmp_path / "ft.ckpt")
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    args = build_parser().parse_args(["serve", "--model", "resnet18", "--checkpoint", str(tmp_path / "ft.ckpt"),
                                      "--labels", str(tmp_path / "labels.txt"), "--input-size", "64", "--device", "cpu"])
    phone = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    picture = Image.new("RGB", (120, 80), (20, 20, 20))
    picture.paste((250, 250, 250), (0, 0, 40, 80))
    picture.save(phone, exif=exif)
    explorer = explorer_for(args)
    with BackgroundServer(create_app(explorer)) as running:
        browser.get(running.url + "/")
        wait(browser, lambda d: "4 classes" in d.find_element(By.ID, "model").text, "the model's header")
        browser.find_element(By.ID, "file").send_keys(str(phone))
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#top button")) == 4, "the classes listed")
        listed = [b.text.split(" — ")[0] for b in browser.find_elements(By.CSS_SELECTOR, "#top button")]
        assert sorted(listed) == sorted(names)
        assert browser.find_element(By.ID, "image-name").text == \
            "phone.jpg (turned upright by its EXIF orientation (6))"
        # upright: the white band stored on the left is on top, as the browser shows the file
        top, bottom = browser.execute_script("""
            const img = document.getElementById('input'), c = document.createElement('canvas');
            c.width = img.naturalWidth; c.height = img.naturalHeight;
            const x = c.getContext('2d'); x.drawImage(img, 0, 0);
            const data = x.getImageData(0, 0, c.width, c.height).data, w = c.width * 4;
            const row = (y) => data.slice(y * w, (y + 1) * w).reduce((a, v) => a + v, 0) / c.width;
            return [row(2), row(c.height - 3)];""")
        assert top > bottom + 300
        no_console_errors(browser)


def test_a_segmentation_model_shows_its_mask_and_explains_a_clicked_region_and_pixel(browser):
    import torch
    from deconvnet.loading import LoadedModel, Preprocessing

    nets = pytest.importorskip("monai.networks.nets", reason="MONAI is in the test extra (pip install -e '.[test]')")
    torch.manual_seed(0)
    model = nets.UNet(2, 3, 3, (4, 8), (2,)).eval()
    explorer = Explorer(LoadedModel(model, Preprocessing.shapes(), ["sky", "road", "car"]), name="unet", rule="guided",
                        photos=[], samples={"scene": lambda: render(3, 0).image})
    with BackgroundServer(create_app(explorer)) as running:
        browser.get(running.url + "/?photo=scene")
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#top button .swatch")) > 0, "the legend")
        assert "segmentation on a 64×64 grid" in browser.find_element(By.ID, "model").text
        assert not browser.find_element(By.ID, "occlusion-panel").is_displayed()
        shown(browser, "input")
        assert browser.find_element(By.ID, "input").get_attribute("src") == explorer.describe(
            explorer.add_photo("scene")["image"])["mask"]  # the predicted mask over the image
        legend = browser.find_elements(By.CSS_SELECTOR, "#top button")
        label = legend[0].text.split(" — ")[0]
        assert "of the image" in legend[0].text
        legend[0].click()
        wait(browser, lambda d: title(d).endswith(f": {label}") and title(d).startswith("Class"), "the class's region")
        shown(browser, "projection")
        shown(browser, "patch")  # its predicted region beside it
        assert "Predicted on" in browser.find_element(By.ID, "view-caption").text
        # a click inside input pixel (32, 32): the image is shown at 320 px, 5 px per input pixel, so 2 px
        # right of and below its centre (160 px) is inside that pixel's square
        target = browser.find_element(By.ID, "input")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", target)
        ActionChains(browser).move_to_element_with_offset(target, 2, 2).click().perform()
        wait(browser, lambda d: title(d).startswith("Pixel (32, 32): "), "the clicked pixel")
        shown(browser, "projection")
        assert browser.find_element(By.ID, "box").is_displayed()
        assert parse_qs(urlparse(browser.current_url).query)["pixel"] == ["32,32"]
        no_console_errors(browser)
    explorer.close()
