// Picasso's pages: uploads, model and visualization choice, settings forms
// built from plugin schemas, job progress, and result rendering.
//
// Everything that comes from the server (names, labels, plugin texts, error
// messages) is put into the page with textContent or attribute setters,
// never parsed as HTML, because plugins and uploads are untrusted.
"use strict";

(function () {
  // ---------------------------------------------------------------- helpers

  /** Creates an element with properties, attributes and children. Strings
   *  among the children become text nodes. */
  function el(tag, options, ...children) {
    const node = document.createElement(tag);
    const opts = options || {};
    for (const [key, value] of Object.entries(opts)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "on") {
        for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
      } else if (key in node && typeof value !== "string") node[key] = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function $(id) {
    return document.getElementById(id);
  }

  function show(node, visible) {
    if (node) node.hidden = !visible;
  }

  function showError(node, message) {
    if (!node) return;
    node.textContent = message || "";
    node.hidden = !message;
  }

  /** Fetches JSON. Rejects with an Error whose message is the server's
   *  `error` field, and whose `body` and `status` are kept for callers. */
  async function api(path, options) {
    let response;
    try {
      response = await fetch(path, Object.assign({ credentials: "same-origin" }, options));
    } catch (cause) {
      throw new Error("The server cannot be reached (" + cause.message + ").");
    }
    if (response.status === 204) return null;
    let body = null;
    const type = response.headers.get("content-type") || "";
    if (type.includes("application/json")) body = await response.json();
    if (!response.ok) {
      const message = body && body.error ? body.error : "Request failed with status " + response.status + ".";
      const error = new Error(message);
      error.status = response.status;
      error.body = body;
      error.retryAfter = response.headers.get("retry-after");
      throw error;
    }
    return body;
  }

  function jobFileUrl(jobId, relPath) {
    const encoded = String(relPath).split("/").map(encodeURIComponent).join("/");
    return "/api/jobs/" + encodeURIComponent(jobId) + "/files/" + encoded;
  }

  function formatBytes(bytes) {
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KiB";
    return (bytes / (1024 * 1024)).toFixed(1) + " MiB";
  }

  function formatNumber(value) {
    if (typeof value !== "number" || !isFinite(value)) return String(value);
    const magnitude = Math.abs(value);
    if (magnitude !== 0 && (magnitude < 0.001 || magnitude >= 10000)) return value.toExponential(2);
    return value.toPrecision(3).replace(/\.?0+$/, "");
  }

  function formatTime(unixSeconds) {
    return new Date(unixSeconds * 1000).toLocaleString();
  }

  function isFinal(state) {
    return !(state === "queued" || state === "running");
  }

  // -------------------------------------------------------- shared catalog

  const catalog = { models: [], visualizations: [] };

  async function loadCatalog() {
    const [models, visualizations] = await Promise.all([api("/api/models"), api("/api/visualizations")]);
    catalog.models = models.models || [];
    catalog.visualizations = (visualizations.visualizations || [])
      .map((listing) => listing.descriptor)
      .filter(Boolean);
  }

  function modelById(id) {
    return catalog.models.find((model) => model.id === id);
  }

  function pluginById(id) {
    return catalog.visualizations.find((plugin) => plugin.id === id);
  }

  // ---------------------------------------------------------------- images

  const images = { records: [], selected: new Set(), known: new Set() };

  async function refreshImages() {
    const body = await api("/api/images");
    images.records = body.images || [];
    for (const record of images.records) {
      // New uploads start selected; the user's later choices are kept.
      if (!images.known.has(record.id)) images.selected.add(record.id);
      images.known.add(record.id);
    }
    const ids = new Set(images.records.map((record) => record.id));
    for (const id of Array.from(images.selected)) if (!ids.has(id)) images.selected.delete(id);
    renderImages();
    updateRunSummary();
  }

  function renderImages() {
    const grid = $("image-grid");
    grid.replaceChildren(...images.records.map(imageTile));
    show($("images-empty"), images.records.length === 0);
  }

  function imageTile(record) {
    const checkboxId = "use-image-" + record.id;
    const checkbox = el("input", {
      type: "checkbox",
      id: checkboxId,
      checked: images.selected.has(record.id),
      on: {
        change: (event) => {
          if (event.target.checked) images.selected.add(record.id);
          else images.selected.delete(record.id);
          updateRunSummary();
        },
      },
    });
    const remove = el("button", {
      type: "button",
      class: "icon-button",
      title: "Delete " + record.name,
      "aria-label": "Delete " + record.name,
      text: "\u00d7",
      on: { click: () => deleteImage(record) },
    });
    return el(
      "li",
      { class: "image-tile" },
      el("img", {
        src: "/api/images/" + encodeURIComponent(record.id) + "/thumbnail",
        alt: record.name,
        loading: "lazy",
      }),
      el(
        "div",
        { class: "image-meta" },
        el("label", { for: checkboxId, class: "image-name" }, checkbox, " ", el("span", { text: record.name })),
        el("span", {
          class: "muted",
          text: record.width + "\u00d7" + record.height + " " + record.format.toUpperCase() + ", " + formatBytes(record.bytes),
        })
      ),
      remove
    );
  }

  async function deleteImage(record) {
    showError($("upload-error"), "");
    try {
      await api("/api/images/" + encodeURIComponent(record.id), { method: "DELETE" });
      images.selected.delete(record.id);
      await refreshImages();
      $("upload-status").textContent = "Deleted " + record.name + ".";
    } catch (error) {
      showError($("upload-error"), error.message);
    }
  }

  async function upload(fileList) {
    const files = Array.from(fileList || []);
    if (files.length === 0) return;
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    const status = $("upload-status");
    showError($("upload-error"), "");
    status.textContent = "Uploading " + files.length + (files.length === 1 ? " file\u2026" : " files\u2026");
    try {
      const body = await api("/api/images", { method: "POST", body: form });
      status.textContent = "Stored " + body.images.length + (body.images.length === 1 ? " image." : " images.");
    } catch (error) {
      const stored = error.body && error.body.stored ? error.body.stored.length : 0;
      status.textContent =
        stored > 0 ? "Stored " + stored + " of " + files.length + " files. The upload stopped at the error below; choose the remaining files again." : "";
      showError($("upload-error"), error.message);
    }
    await refreshImages().catch((error) => showError($("upload-error"), error.message));
  }

  function setupUpload() {
    const input = $("file-input");
    const zone = $("dropzone");
    input.addEventListener("change", () => {
      upload(input.files);
      input.value = "";
    });
    for (const name of ["dragenter", "dragover"]) {
      zone.addEventListener(name, (event) => {
        event.preventDefault();
        zone.classList.add("dragging");
      });
    }
    for (const name of ["dragleave", "dragend"]) {
      zone.addEventListener(name, () => zone.classList.remove("dragging"));
    }
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      if (event.dataTransfer) upload(event.dataTransfer.files);
    });
  }

  // ------------------------------------------------- models and plugins

  function selectedModels() {
    return Array.from(document.querySelectorAll('input[name="model"]:checked')).map((box) => box.value);
  }

  function selectedPlugins() {
    return Array.from(document.querySelectorAll('input[name="visualization"]:checked')).map((box) => box.value);
  }

  /** Disables gradient plugins while a chosen model has no gradients, and
   *  names that model and the reason. */
  function updateGradientAvailability() {
    const lacking = selectedModels()
      .map(modelById)
      .filter((model) => model && model.gradients);
    for (const card of document.querySelectorAll(".visualization")) {
      const plugin = pluginById(card.dataset.plugin);
      const box = card.querySelector('input[name="visualization"]');
      const note = card.querySelector(".gradient-note");
      const blocked = Boolean(plugin && plugin.needs_gradients && lacking.length > 0);
      box.disabled = blocked;
      if (blocked) box.checked = false;
      card.classList.toggle("disabled", blocked);
      if (blocked) {
        note.replaceChildren(
          "Unavailable with the chosen models: ",
          ...lacking.map((model, index) => [index > 0 ? "; " : "", el("strong", { text: model.name }), ": " + model.gradients])
        );
      }
      show(note, blocked);
    }
  }

  function setupChoices() {
    for (const box of document.querySelectorAll('input[name="model"]')) {
      box.addEventListener("change", () => {
        updateGradientAvailability();
        renderAllSettings();
        updateRunSummary();
      });
    }
    for (const box of document.querySelectorAll('input[name="visualization"]')) {
      box.addEventListener("change", () => {
        renderSettings(box.closest(".visualization"));
        updateRunSummary();
      });
    }
    updateGradientAvailability();
    renderAllSettings();
  }

  // -------------------------------------------------------- settings forms

  /** The chosen models, or the first model while none is chosen, so the
   *  forms still list classes and tensors before the user picks. */
  function formModels() {
    const chosen = selectedModels().map(modelById).filter(Boolean);
    return chosen.length > 0 ? chosen : catalog.models.slice(0, 1);
  }

  /** Lists the classes that every model in `models` has. One job shares its
   *  settings across models, and the server rejects a class index that one
   *  of them lacks. An index can name a different class in each model, so
   *  each entry keeps every distinct label. */
  function sharedClasses(models) {
    if (models.length === 0) return [];
    const count = Math.min(...models.map((model) => Math.min(model.classes, (model.labels || []).length)));
    const classes = [];
    for (let index = 0; index < count; index++) {
      const labels = Array.from(new Set(models.map((model) => model.labels[index])));
      classes.push({ index: index, labels: labels });
    }
    return classes;
  }

  /** Lists the tensors (by name) that every model in `models` has, in the
   *  first model's order, described by the first model's op and shape. */
  function sharedTensors(models) {
    if (models.length === 0) return [];
    const others = models.slice(1).map((model) => new Set((model.tensors || []).map((tensor) => tensor.name)));
    return (models[0].tensors || []).filter((tensor) => others.every((names) => names.has(tensor.name)));
  }

  function modelNames(models) {
    return models.map((model) => model.name).join(", ");
  }

  function renderAllSettings() {
    for (const card of document.querySelectorAll(".visualization")) renderSettings(card);
  }

  function renderSettings(card) {
    const fieldset = card.querySelector(".settings");
    const box = card.querySelector('input[name="visualization"]');
    const plugin = pluginById(card.dataset.plugin);
    const legend = fieldset.querySelector("legend");
    if (!box.checked || !plugin || plugin.settings.length === 0) {
      fieldset.replaceChildren(legend);
      show(fieldset, false);
      return;
    }
    // Keep what the user typed when the form is rebuilt for another model.
    const previous = readSettings(card, true).values;
    const models = formModels();
    const rows = plugin.settings.map((setting, index) =>
      settingRow(plugin, setting, index, models, Object.prototype.hasOwnProperty.call(previous, setting.name) ? previous[setting.name] : setting.default)
    );
    fieldset.replaceChildren(legend, ...rows);
    show(fieldset, true);
  }

  function settingRow(plugin, setting, index, models, value) {
    const id = "setting-" + plugin.id + "-" + index;
    const helpId = id + "-help";
    const kind = setting.kind || {};
    const common = { id: id, "aria-describedby": setting.help ? helpId : null, dataset: { name: setting.name, kind: kind.type } };
    let control;
    let extra = null;
    switch (kind.type) {
      case "choice":
        control = el(
          "select",
          common,
          (kind.options || []).map((option) => el("option", { value: option, text: option, selected: option === value }))
        );
        break;
      case "integer":
      case "float":
        control = el("input", Object.assign({}, common, {
          type: "number",
          min: String(kind.min),
          max: String(kind.max),
          step: kind.type === "integer" ? "1" : floatStep(kind.min, kind.max),
          value: value === null || value === undefined ? "" : String(value),
          required: true,
        }));
        break;
      case "boolean":
        control = el("input", Object.assign({}, common, { type: "checkbox", checked: Boolean(value) }));
        break;
      case "class": {
        const picker = classPicker(setting, common, models, value);
        control = picker.control;
        extra = picker.note;
        break;
      }
      case "tensor": {
        const picker = tensorPicker(common, models, value);
        control = picker.control;
        extra = picker.note;
        break;
      }
      default:
        control = el("span", { class: "muted", text: "Unsupported setting type " + JSON.stringify(kind.type) + "; the default is used." });
    }
    const label = el("label", { for: id, text: setting.label || setting.name });
    const help = setting.help ? el("small", { id: helpId, class: "help", text: setting.help }) : null;
    const range = kind.type === "integer" || kind.type === "float" ? el("span", { class: "muted small", text: formatNumber(kind.min) + " to " + formatNumber(kind.max) }) : null;
    return el("div", { class: "setting-row" + (kind.type === "boolean" ? " inline" : "") }, label, control, range, extra, help);
  }

  /** Builds a class select with a search box. Returns the control and a
   *  note that names the models whose labels it lists, and a class the user
   *  had chosen that is no longer offered. */
  function classPicker(setting, common, models, value) {
    const classes = sharedClasses(models);
    const chosen = typeof value === "number" ? value : null;
    const offered = chosen !== null && chosen < classes.length;
    const select = el(
      "select",
      common,
      el("option", { value: "", text: "Top predicted", selected: !offered }),
      classes.map((entry) => el("option", { value: String(entry.index), text: classOptionText(entry), selected: offered && entry.index === chosen }))
    );
    const search = el("input", {
      type: "search",
      class: "class-search",
      placeholder: "Search " + classes.length + " classes",
      "aria-label": "Search the classes of " + (models.length > 0 ? modelNames(models) : "the model") + " for " + setting.label,
      on: { input: (event) => filterOptions(select, event.target.value) },
    });
    const notes = [];
    if (models.length === 0) notes.push("Choose a model to list its classes.");
    else if (models.length === 1) notes.push("Labels of " + models[0].name + ".");
    else {
      notes.push("Only classes 0 to " + (classes.length - 1) + ", which every chosen model has. Labels of " + models.map((model) => model.name).join(" / ") + ".");
      if (classes.some((entry) => entry.labels.length > 1)) notes.push("An index can mean a different class in each model.");
    }
    if (chosen !== null && !offered) notes.push("Class " + chosen + " is not a class of every chosen model, so the top predicted class is used.");
    return {
      control: el("div", { class: "class-picker" }, search, select),
      note: el("span", { class: "muted small", text: notes.join(" ") }),
    };
  }

  /** Names a class by index and labels, leaving out labels that only repeat
   *  the index (MNIST's "3"). */
  function classOptionText(entry) {
    const index = String(entry.index);
    if (entry.labels.every((label) => label === index)) return index;
    return index + ": " + entry.labels.join(" / ");
  }

  /** Builds a tensor select over the tensors that every chosen model has. */
  function tensorPicker(common, models, value) {
    const tensors = sharedTensors(models);
    const offered = typeof value === "string" && tensors.some((tensor) => tensor.name === value);
    const control = el(
      "select",
      common,
      el("option", { value: "", text: "Plugin default", selected: !offered }),
      tensors.map((tensor) =>
        el("option", {
          value: tensor.name,
          text: tensor.name + " (" + tensor.op_type + ", " + (tensor.shape || []).join("\u00d7") + ")",
          selected: offered && value === tensor.name,
        })
      )
    );
    const notes = [];
    if (models.length > 1) {
      notes.push(
        tensors.length > 0
          ? "Only the " + tensors.length + " tensors that every chosen model has, with the shapes of " + models[0].name + "."
          : "No tensor name is shared by every chosen model, so each model uses the plugin's default."
      );
    }
    if (typeof value === "string" && !offered) notes.push("Tensor " + value + " is not in every chosen model, so the plugin's default is used.");
    return { control: control, note: notes.length > 0 ? el("span", { class: "muted small", text: notes.join(" ") }) : null };
  }

  /** Computes a step that gives about a hundred values between the bounds. */
  function floatStep(min, max) {
    const span = Math.abs(max - min);
    if (!isFinite(span) || span === 0) return "any";
    return String(Math.pow(10, Math.floor(Math.log10(span / 100))));
  }

  function filterOptions(select, query) {
    const needle = query.trim().toLowerCase();
    for (const option of select.options) {
      if (option.value === "") continue;
      option.hidden = needle !== "" && !option.textContent.toLowerCase().includes(needle);
    }
  }

  /** Reads one plugin's form. Returns the values and the first problem;
   *  `lenient` keeps unparsable numbers out instead of reporting them. */
  function readSettings(card, lenient) {
    const values = {};
    let problem = null;
    const plugin = pluginById(card.dataset.plugin);
    for (const control of card.querySelectorAll(".settings [data-name]")) {
      const name = control.dataset.name;
      const setting = plugin ? plugin.settings.find((candidate) => candidate.name === name) : null;
      const label = setting ? setting.label || name : name;
      switch (control.dataset.kind) {
        case "choice":
          values[name] = control.value;
          break;
        case "boolean":
          values[name] = control.checked;
          break;
        case "class":
          values[name] = control.value === "" ? null : Number.parseInt(control.value, 10);
          break;
        case "tensor":
          values[name] = control.value === "" ? null : control.value;
          break;
        case "integer":
        case "float": {
          const number = control.value.trim() === "" ? NaN : Number(control.value);
          const kind = setting ? setting.kind : {};
          const integer = control.dataset.kind === "integer";
          const bad = !isFinite(number) || (integer && !Number.isInteger(number)) || number < kind.min || number > kind.max;
          if (bad) {
            if (!problem) problem = label + " of " + (plugin ? plugin.title : name) + " must be " + (integer ? "a whole number" : "a number") + " from " + kind.min + " to " + kind.max + ".";
            if (lenient) continue;
          }
          values[name] = number;
          break;
        }
        default:
          break;
      }
    }
    return { values: values, problem: problem };
  }

  // -------------------------------------------------------------- running

  function updateRunSummary() {
    const summary = $("run-summary");
    if (!summary) return;
    const counts = [images.selected.size, selectedModels().length, selectedPlugins().length];
    summary.textContent =
      counts[0] + " image(s) \u00d7 " + counts[1] + " model(s) \u00d7 " + counts[2] + " visualization(s) = " + counts[0] * counts[1] * counts[2] + " render(s)";
  }

  function buildSpec() {
    const spec = {
      images: images.records.filter((record) => images.selected.has(record.id)).map((record) => record.id),
      models: selectedModels(),
      visualizations: [],
    };
    if (spec.images.length === 0) throw new Error("Choose at least one image: upload one, or tick one in the image list.");
    if (spec.models.length === 0) throw new Error("Choose at least one model.");
    for (const card of document.querySelectorAll(".visualization")) {
      const box = card.querySelector('input[name="visualization"]');
      if (!box.checked) continue;
      const read = readSettings(card, false);
      if (read.problem) throw new Error(read.problem);
      spec.visualizations.push({ plugin: card.dataset.plugin, settings: read.values });
    }
    if (spec.visualizations.length === 0) throw new Error("Choose at least one visualization.");
    const seed = $("seed-input").value.trim();
    if (seed !== "") {
      if (!/^\d+$/.test(seed)) throw new Error("The seed must be a whole number of 0 or more.");
      spec.seed = Number(seed);
      if (!Number.isSafeInteger(spec.seed)) throw new Error("The seed must be below 2^53 to be sent exactly.");
    }
    return spec;
  }

  let activeJob = null;

  async function run() {
    const runError = $("run-error");
    showError(runError, "");
    let spec;
    try {
      spec = buildSpec();
    } catch (error) {
      showError(runError, error.message);
      return;
    }
    const button = $("run-button");
    button.disabled = true;
    try {
      const job = await api("/api/jobs", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(spec),
      });
      show($("results"), false);
      $("results-body").replaceChildren();
      followJob(job);
      refreshJobs();
    } catch (error) {
      const retry = error.retryAfter ? " Try again in " + error.retryAfter + " s." : "";
      showError(runError, error.message + retry);
    } finally {
      button.disabled = false;
    }
  }

  /** Polls a job until it finishes, updating the progress bar, then shows
   *  its results. Only the most recently followed job updates the page. */
  function followJob(job) {
    const token = {};
    activeJob = { id: job.id, token: token };
    const link = $("job-link");
    if (link) link.href = "/jobs/" + encodeURIComponent(job.id);
    show($("job-progress"), true);
    $("cancel-button").disabled = false;
    updateProgress(job);
    const poll = async () => {
      if (!activeJob || activeJob.token !== token) return;
      let current;
      try {
        current = await api("/api/jobs/" + encodeURIComponent(job.id));
      } catch (error) {
        $("progress-text").textContent = error.message;
        if (error.status === 404) return;
        setTimeout(poll, 3000);
        return;
      }
      updateProgress(current);
      if (isFinal(current.state)) {
        $("cancel-button").disabled = true;
        refreshJobs();
        await showJobResults(current);
      } else {
        setTimeout(poll, 700);
      }
    };
    setTimeout(poll, 300);
  }

  function updateProgress(job) {
    const bar = $("progress-bar");
    const text = $("progress-text");
    const fraction = job.progress_total > 0 ? job.progress_done / job.progress_total : 0;
    if (job.state === "queued") bar.removeAttribute("value");
    else bar.value = isFinal(job.state) && job.state === "completed" ? 1 : fraction;
    let message = stateLabel(job.state);
    if (job.state === "running") message += " \u2014 " + Math.floor(fraction * 100) + "%";
    if (job.message) message += ": " + job.message;
    text.textContent = message;
    const badge = $("job-state");
    if (badge) {
      badge.textContent = stateLabel(job.state);
      badge.dataset.state = job.state;
    }
  }

  function stateLabel(state) {
    return (
      {
        queued: "Queued",
        running: "Running",
        completed: "Completed",
        failed: "Failed",
        cancelled: "Cancelled",
        interrupted: "Interrupted",
      }[state] || state
    );
  }

  async function cancelActive() {
    if (!activeJob) return;
    $("cancel-button").disabled = true;
    try {
      const job = await api("/api/jobs/" + encodeURIComponent(activeJob.id) + "/cancel", { method: "POST" });
      updateProgress(job);
    } catch (error) {
      $("progress-text").textContent = error.message;
      $("cancel-button").disabled = false;
    }
  }

  async function showJobResults(job) {
    const section = $("results");
    const body = $("results-body");
    let manifest = null;
    try {
      // Only a completed job writes its manifest.
      if (job.state === "completed") manifest = await api("/api/jobs/" + encodeURIComponent(job.id) + "/manifest");
    } catch (error) {
      if (error.status !== 404) {
        body.replaceChildren(el("p", { class: "notice error", text: error.message }));
        show(section, true);
        return;
      }
    }
    if (!manifest) {
      const reason = job.message ? ": " + job.message : ".";
      body.replaceChildren(el("p", { class: "notice", text: "This job produced no results (" + stateLabel(job.state).toLowerCase() + ")" + reason }));
    } else {
      body.replaceChildren(...renderManifest(job.id, manifest));
    }
    show(section, true);
  }

  // -------------------------------------------------------------- results

  function renderManifest(jobId, manifest) {
    const modelNames = new Map(manifest.models.map((model) => [model.id, model.name]));
    const plugins = new Map(manifest.plugins.map((plugin) => [plugin.id, plugin]));
    const nodes = manifest.images.map((image) => renderImageResult(jobId, image, modelNames, manifest.plugins, plugins));
    nodes.push(runDetails(manifest));
    return nodes;
  }

  function renderImageResult(jobId, image, modelNames, stamps, plugins) {
    const card = el("article", { class: "card result-card" });
    card.append(el("h3", {}, el("span", { text: image.name }), " ", el("span", { class: "muted small", text: image.width + "\u00d7" + image.height })));
    if (image.error) card.append(el("p", { class: "notice error", text: image.error }));
    const top = el("div", { class: "result-top" });
    if (image.photo) {
      top.append(
        el("figure", { class: "photo" },
          el("img", { src: jobFileUrl(jobId, image.photo), alt: "Input image " + image.name }),
          el("figcaption", { class: "muted small", text: "Input" })
        )
      );
    }
    const predictions = el("div", { class: "predictions" });
    for (const model of image.models) predictions.append(renderPredictions(model, modelNames));
    top.append(predictions);
    card.append(top);
    card.append(renderHeatmapGrid(jobId, image, modelNames, stamps, plugins));
    return card;
  }

  function renderPredictions(model, modelNames) {
    const name = modelNames.get(model.model) || model.model;
    const box = el("section", { class: "prediction" }, el("h4", { text: name }));
    if (model.error) {
      box.append(el("p", { class: "notice error", text: model.error }));
      return box;
    }
    const list = el("ol", { class: "top-classes", "aria-label": "Top classes of " + name });
    for (const score of model.top_classes) list.append(scoreItem(score));
    box.append(list);
    return box;
  }

  function scoreItem(score) {
    const percent = Math.max(0, Math.min(1, score.probability)) * 100;
    const bar = el("span", { class: "bar" });
    bar.style.width = percent.toFixed(1) + "%";
    return el(
      "li",
      {},
      el("span", { class: "class-label", title: score.label, text: score.label }),
      el("span", { class: "bar-track", "aria-hidden": "true" }, bar),
      el("span", { class: "probability", text: percent.toFixed(percent >= 10 ? 1 : 2) + "%" })
    );
  }

  /** One row per visualization, one column per model, so the maps of a
   *  method on different models sit side by side. */
  /** Identifies a render's visualization. Two visualizations of one plugin
   *  (different settings) have different indices in the job's request. */
  function visualizationKey(render) {
    return typeof render.visualization === "number" ? "v" + render.visualization : "p" + render.plugin;
  }

  /** The plugin stamp of a render: by request index, or by plugin id in
   *  manifests written before the index was recorded. */
  function stampOf(render, stamps, plugins) {
    if (typeof render.visualization === "number" && stamps[render.visualization]) return stamps[render.visualization];
    return plugins.get(render.plugin);
  }

  function describeSettings(settings) {
    return Object.entries(settings || {})
      .map(([name, value]) => name + " " + (value === null ? "default" : String(value)))
      .join(", ");
  }

  /** One row per visualization, one column per model, so the maps of a
   *  method on different models sit side by side. */
  function renderHeatmapGrid(jobId, image, modelNames, stamps, plugins) {
    const order = [];
    const firstRender = new Map();
    for (const model of image.models) {
      for (const render of model.renders) {
        const key = visualizationKey(render);
        if (!firstRender.has(key)) {
          order.push(key);
          firstRender.set(key, render);
        }
      }
    }
    const wrap = el("div", { class: "heatmap-rows" });
    for (const key of order) {
      const first = firstRender.get(key);
      const plugin = stampOf(first, stamps, plugins);
      const row = el("section", { class: "heatmap-row" });
      const version = plugin ? " " + plugin.version : "";
      row.append(
        el("h4", {}, el("span", { text: plugin ? plugin.title : first.plugin }), " ", el("code", { class: "muted small", text: first.plugin + version })),
        plugin && plugin.settings ? el("p", { class: "muted small settings-used", text: describeSettings(plugin.settings) }) : null
      );
      const cells = el("div", { class: "heatmap-cells" });
      for (const model of image.models) {
        const render = model.renders.find((candidate) => visualizationKey(candidate) === key);
        if (!render) continue;
        cells.append(renderCell(jobId, image, model, render, modelNames.get(model.model) || model.model, plugin));
      }
      row.append(cells);
      wrap.append(row);
    }
    return wrap;
  }

  function renderCell(jobId, image, model, render, modelName, plugin) {
    const cell = el("div", { class: "heatmap-cell" });
    cell.append(el("div", { class: "cell-head" }, el("strong", { text: modelName }), el("span", { class: "muted small", text: render.duration_ms + " ms" })));
    if (render.error) {
      cell.append(el("p", { class: "notice error", text: render.error }));
      return cell;
    }
    const context = { jobId: jobId, image: image.name, model: modelName, plugin: plugin ? plugin.title : render.plugin };
    for (const panel of render.panels) cell.append(renderPanel(panel, context));
    return cell;
  }

  function renderPanel(panel, context) {
    if (panel.kind === "heatmap") return heatmapFigure(panel, context);
    if (panel.kind === "image") {
      return el("figure", { class: "panel" },
        el("img", { src: jobFileUrl(context.jobId, panel.png), alt: panel.title + " (" + context.plugin + ", " + context.model + ", " + context.image + ")" }),
        el("figcaption", { text: panel.title }),
        el("a", { href: jobFileUrl(context.jobId, panel.png), download: "", text: "PNG" })
      );
    }
    if (panel.kind === "scores") {
      const list = el("ol", { class: "top-classes" });
      for (const score of panel.scores || []) list.append(scoreItem(score));
      return el("figure", { class: "panel" }, el("figcaption", {}, el("span", { class: "panel-title", text: panel.title })), list);
    }
    return el("p", { class: "muted", text: "Unknown panel kind " + JSON.stringify(panel.kind) });
  }

  function heatmapFigure(panel, context) {
    const label = panel.class_label || "";
    const titled = label !== "" && panel.title.includes(label);
    let classLine = null;
    if (label !== "" && !titled) {
      classLine = "Class: " + label;
      if (typeof panel.class_index === "number") classLine += " (" + panel.class_index + ")";
    }
    const subject = label !== "" ? " (class " + label + ")" : "";
    const alt = panel.title + subject + ": " + context.plugin + " heatmap of " + context.model + " over " + context.image;
    const overlay = jobFileUrl(context.jobId, panel.overlay);
    const scale = panel.scale === "diverging" ? "diverging" : "sequential";
    const legend = el(
      "div",
      { class: "colorbar" },
      el("img", { src: panel.colorbar ? jobFileUrl(context.jobId, panel.colorbar) : "/static/colorbar/" + scale + ".png", alt: scale === "diverging" ? "Color scale from blue (negative) through white (zero) to red (positive)" : "Color scale from dark purple (low) to yellow (high)" }),
      el("div", { class: "colorbar-labels" }, el("span", { text: formatNumber(panel.color_min) }), scale === "diverging" ? el("span", { text: "0" }) : null, el("span", { text: formatNumber(panel.color_max) }))
    );
    return el(
      "figure",
      { class: "panel heatmap" },
      el("a", { href: overlay, target: "_blank", rel: "noopener" }, el("img", { src: overlay, alt: alt })),
      el(
        "figcaption",
        {},
        el("span", { class: "panel-title", text: panel.title }),
        classLine ? el("span", { class: "small", text: classLine }) : null,
        legend,
        el("span", { class: "muted small", text: panel.meaning }),
        el("span", { class: "muted small", text: "This map: " + formatNumber(panel.min) + " to " + formatNumber(panel.max) + ", " + panel.width + "\u00d7" + panel.height }),
        el(
          "span",
          { class: "downloads" },
          el("a", { href: overlay, download: "", text: "Overlay PNG" }),
          el("a", { href: jobFileUrl(context.jobId, panel.colored), download: "", text: "Heatmap PNG" }),
          el("a", { href: jobFileUrl(context.jobId, panel.npy), download: "", text: "Raw .npy" })
        )
      )
    );
  }

  function runDetails(manifest) {
    const details = el("details", { class: "card run-details" }, el("summary", { text: "Run details" }));
    const list = el("dl", {});
    const add = (term, value) => list.append(el("dt", { text: term }), el("dd", {}, value));
    add("Started", formatTime(manifest.started_unix));
    add("Seed", String(manifest.seed));
    add("Host", "picasso " + manifest.host_version + ", " + manifest.wit_package);
    for (const model of manifest.models) add("Model " + model.id, el("span", {}, model.name + " ", el("code", { class: "small", text: model.content_hash.slice(0, 16) + "\u2026" })));
    for (const plugin of manifest.plugins) {
      add(
        "Plugin " + plugin.id,
        el("span", {}, plugin.title + " " + plugin.version + " ", el("code", { class: "small", text: JSON.stringify(plugin.settings) }))
      );
    }
    details.append(list, el("a", { href: "/api/jobs/" + encodeURIComponent(manifest.job) + "/manifest", text: "manifest.json" }));
    return details;
  }

  // ----------------------------------------------------------------- jobs

  async function refreshJobs() {
    const table = $("job-table");
    if (!table) return;
    let body;
    try {
      body = await api("/api/jobs");
    } catch (error) {
      showError($("run-error"), error.message);
      return;
    }
    const jobs = body.jobs || [];
    table.tBodies[0].replaceChildren(...jobs.map(jobRow));
    show(table, jobs.length > 0);
    show($("jobs-empty"), jobs.length === 0);
  }

  function jobRow(job) {
    const fraction = job.progress_total > 0 ? job.progress_done / job.progress_total : isFinal(job.state) && job.state === "completed" ? 1 : 0;
    const spec = job.spec;
    const runs = spec.images.length + (spec.images.length === 1 ? " image" : " images") + " \u00d7 " + spec.models.join(", ") + " \u00d7 " + spec.visualizations.map((v) => v.plugin).join(", ");
    const open = el("a", { href: "/jobs/" + encodeURIComponent(job.id), text: "Open" });
    const remove = el("button", {
      type: "button",
      class: "button small",
      text: "Delete",
      "aria-label": "Delete job created " + formatTime(job.created_unix),
      on: { click: () => deleteJob(job) },
    });
    return el(
      "tr",
      {},
      el("td", { text: formatTime(job.created_unix) }),
      el("td", {}, el("span", { class: "state-badge", dataset: { state: job.state }, text: stateLabel(job.state) }), job.message ? el("div", { class: "muted small", text: job.message }) : null),
      el("td", { text: Math.floor(fraction * 100) + "%" }),
      el("td", { class: "runs", text: runs }),
      el("td", { class: "actions" }, open, " ", remove)
    );
  }

  async function deleteJob(job) {
    try {
      await api("/api/jobs/" + encodeURIComponent(job.id), { method: "DELETE" });
      if (activeJob && activeJob.id === job.id) {
        activeJob = null;
        show($("job-progress"), false);
        show($("results"), false);
      }
    } catch (error) {
      showError($("run-error"), error.message);
    }
    refreshJobs();
  }

  // ------------------------------------------------------------- pages

  async function startIndex() {
    setupUpload();
    $("run-button").addEventListener("click", run);
    $("cancel-button").addEventListener("click", cancelActive);
    try {
      await loadCatalog();
    } catch (error) {
      showError($("run-error"), "Failed to load models and visualizations: " + error.message);
    }
    setupChoices();
    await Promise.all([
      refreshImages().catch((error) => showError($("upload-error"), error.message)),
      refreshJobs(),
    ]);
    updateRunSummary();
  }

  async function startJobPage() {
    const jobId = document.body.dataset.jobId;
    if (!$("job-status")) return;
    $("cancel-button").addEventListener("click", cancelActive);
    try {
      const job = await api("/api/jobs/" + encodeURIComponent(jobId));
      const spec = job.spec;
      $("job-summary").textContent =
        "Created " + formatTime(job.created_unix) + ": " + spec.images.length + " image(s), models " + spec.models.join(", ") + ", visualizations " + spec.visualizations.map((v) => v.plugin).join(", ") + ".";
      updateProgress(job);
      if (isFinal(job.state)) {
        $("job-message").textContent = job.message || "";
        await showJobResults(job);
      } else {
        followJob(job);
      }
    } catch (error) {
      showError($("page-error"), error.message);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (page === "index") startIndex();
    else if (page === "job") startJobPage();
  });
})();
