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

  /** Formats a number with about three significant digits. Whole numbers
   *  below a million stay whole: toPrecision would write 1234 as "1.23e+3". */
  function formatNumber(value) {
    if (typeof value !== "number" || !isFinite(value)) return String(value);
    const magnitude = Math.abs(value);
    if (Number.isInteger(value) && magnitude < 1e6) return String(value);
    if (magnitude !== 0 && (magnitude < 0.001 || magnitude >= 10000)) return value.toExponential(2);
    if (magnitude >= 1000) return value.toFixed(0);
    const text = value.toPrecision(3);
    return text.includes(".") ? text.replace(/\.?0+$/, "") : text;
  }

  /** Writes a count with its noun, adding "s" unless the count is 1. */
  function plural(count, noun) {
    return count + " " + noun + (count === 1 ? "" : "s");
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
      const failed = error.body && Array.isArray(error.body.failed) ? error.body.failed : [];
      status.textContent = stored > 0 ? "Stored " + stored + " of " + files.length + " files." : "";
      const reasons = failed.length > 1 ? failed.map((entry) => entry.error).join("\n") : error.message;
      showError($("upload-error"), reasons);
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
   *  names that model and the reason. A plugin unticked that way is ticked
   *  again once no chosen model lacks gradients. */
  function updateGradientAvailability() {
    const lacking = selectedModels()
      .map(modelById)
      .filter((model) => model && model.gradients_unavailable);
    for (const card of document.querySelectorAll(".visualization")) {
      const plugin = pluginById(card.dataset.plugin);
      const box = card.querySelector('input[name="visualization"]');
      const note = card.querySelector(".gradient-note");
      const blocked = Boolean(plugin && plugin.needs_gradients && lacking.length > 0);
      if (blocked && !box.disabled) card.dataset.wasChecked = box.checked ? "true" : "";
      if (!blocked && box.disabled && card.dataset.wasChecked) box.checked = true;
      box.disabled = blocked;
      if (blocked) box.checked = false;
      card.classList.toggle("disabled", blocked);
      if (blocked) {
        // The reasons can list every supported operator, so they stay folded
        // in each plugin and open in full on the model cards.
        note.replaceChildren(
          el("span", { text: "Unavailable: this plugin needs gradients, and " + (lacking.length === 1 ? "this chosen model has none:" : "these chosen models have none:") }),
          ...lacking.map((model) => el("details", {}, el("summary", { text: model.name }), el("p", { class: "small", text: model.gradients_unavailable })))
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

  /** Returns the chosen models, or the first model while none is chosen, so
   *  the forms still list classes and tensors before the user picks. */
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
    const imageCount = images.selected.size;
    const modelCount = selectedModels().length;
    const pluginCount = selectedPlugins().length;
    summary.textContent =
      plural(imageCount, "image") + " \u00d7 " + plural(modelCount, "model") + " \u00d7 " + plural(pluginCount, "visualization") + " = " + plural(imageCount * modelCount * pluginCount, "render");
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
   *  its results and calls `onFinished(job, manifest)` when given. Only the
   *  most recently followed job updates the page. */
  function followJob(job, onFinished) {
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
        const manifest = await showJobResults(current);
        if (onFinished) onFinished(current, manifest);
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
    let message = jobStateLabel(job);
    if (job.state === "running") message += " \u2014 " + Math.floor(fraction * 100) + "%";
    if (job.message) message += ": " + job.message;
    text.textContent = message;
    const badge = $("job-state");
    if (badge) setStateBadge(badge, job);
  }

  /** Returns whether a job completed with some renders or images failed.
   *  The server sets a completed job's message only then. */
  function completedWithErrors(job) {
    return job.state === "completed" && Boolean(job.message);
  }

  function jobStateLabel(job) {
    return completedWithErrors(job) ? "Completed with errors" : stateLabel(job.state);
  }

  function setStateBadge(badge, job) {
    badge.textContent = jobStateLabel(job);
    badge.dataset.state = completedWithErrors(job) ? "partial" : job.state;
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

  /** Shows a finished job's results, or explains why it has none. Returns
   *  the manifest, or null when there is none. */
  async function showJobResults(job) {
    const section = $("results");
    const body = $("results-body");
    let manifest = null;
    try {
      // The runner writes the manifest only after the last render, so a
      // failed or interrupted job has none. A cancelled job has none either,
      // but one that has a manifest still gets its renders shown.
      if (job.state === "completed" || job.state === "cancelled") manifest = await api("/api/jobs/" + encodeURIComponent(job.id) + "/manifest");
    } catch (error) {
      if (error.status !== 404) {
        body.replaceChildren(el("p", { class: "notice error", text: error.message }));
        show(section, true);
        return null;
      }
    }
    body.replaceChildren(...(manifest ? renderManifest(job, manifest) : [noResultsNotice(job)]));
    show(section, true);
    return manifest;
  }

  function noResultsNotice(job) {
    const reason = job.message ? ": " + job.message : ".";
    const texts = {
      cancelled: "This job was cancelled before it finished, so it has no results, not even for the renders that had finished. Run it again to see them.",
      failed: "This job failed before it produced results" + reason,
      interrupted: "The server stopped while this job was queued or running, so it has no results. Run it again to see them.",
      completed: "The results of this job were not found. They may have been removed after the retention period.",
    };
    const text = texts[job.state] || "This job has no results (" + stateLabel(job.state).toLowerCase() + ")" + reason;
    return el("p", { class: "notice " + (job.state === "cancelled" ? "warn" : "error"), text: text });
  }

  // -------------------------------------------------------------- results

  /** Renders a manifest. `view` collects what the parts share: names, the
   *  plugin stamps and the heatmaps that the color scale control switches. */
  function renderManifest(job, manifest) {
    const view = {
      jobId: job.id,
      modelIds: manifest.models.map((model) => model.id),
      modelNames: new Map(manifest.models.map((model) => [model.id, model.name])),
      stamps: manifest.plugins,
      plugins: new Map(manifest.plugins.map((plugin) => [plugin.id, plugin])),
      singleModel: manifest.models.length === 1,
      heatmaps: [],
    };
    const images = manifest.images.map((image) => renderImageResult(image, view));
    const nodes = [];
    const notice = jobNotice(job, images);
    if (notice) nodes.push(notice);
    const control = scaleControl(view);
    if (control) nodes.push(control);
    nodes.push(...images, runDetails(manifest));
    return nodes;
  }

  /** Says that some renders failed or that the job was cancelled, with a
   *  link to the first error in `images`. */
  function jobNotice(job, images) {
    let text = null;
    if (job.state === "cancelled") text = "This job was cancelled; the results below are the renders that finished before it stopped.";
    else if (job.message) text = job.message.charAt(0).toUpperCase() + job.message.slice(1) + ".";
    if (!text) return null;
    const notice = el("p", { class: "notice warn job-notice", role: "status" }, text);
    const firstError = images.map((card) => card.querySelector(".notice.error")).find(Boolean);
    if (firstError) {
      firstError.id = "first-error";
      firstError.tabIndex = -1;
      notice.append(" ", el("a", { href: "#first-error", text: "Go to the first error" }));
    }
    return notice;
  }

  let scaleControls = 0;

  /** Builds the control that switches every heatmap between the range that
   *  its visualization shares across models and the map's own range. It is
   *  left out when no map's own range differs from the shared one. */
  function scaleControl(view) {
    if (!view.heatmaps.some((heatmap) => heatmap.differs)) return null;
    scaleControls += 1;
    const name = "color-scale-" + scaleControls;
    const option = (mode, text) =>
      el(
        "label",
        { class: "segment" },
        el("input", {
          type: "radio",
          name: name,
          value: mode,
          checked: mode === "shared",
          on: { change: () => view.heatmaps.forEach((heatmap) => heatmap.apply(mode)) },
        }),
        el("span", { text: text })
      );
    const help = view.singleModel
      ? "Shared: the maps of one visualization on one image use one range. Per map: each map spans its own range, which shows the structure of weak maps."
      : "Shared: the maps of one visualization on one image use one range, so a color means the same value on every model. Per map: each map spans its own range, which shows the structure of weak maps.";
    return el(
      "fieldset",
      { class: "scale-toggle" },
      el("legend", { text: "Color scale" }),
      el("div", { class: "segments" }, option("shared", view.singleModel ? "Shared by each visualization" : "Shared across models"), option("own", "Per map")),
      el("p", { class: "muted small", text: help })
    );
  }

  function renderImageResult(image, view) {
    const card = el("article", { class: "card result-card" });
    card.append(el("h3", {}, el("span", { text: image.name }), " ", el("span", { class: "muted small", text: image.width + "\u00d7" + image.height })));
    if (image.error) card.append(el("p", { class: "notice error", text: image.error }));
    const top = el("div", { class: "result-top" });
    if (image.photo) {
      top.append(
        el("figure", { class: "photo" },
          el("img", { src: jobFileUrl(view.jobId, image.photo), alt: "Input image " + image.name }),
          el("figcaption", { class: "muted small", text: "Input" })
        )
      );
    }
    const predictions = el("div", { class: "predictions" });
    for (const model of image.models) predictions.append(renderPredictions(model, view.modelNames));
    top.append(predictions);
    card.append(top);
    card.append(renderHeatmapGrid(image, view));
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
      el("span", { class: "class-label", text: score.label }),
      el("span", { class: "bar-track", "aria-hidden": "true" }, bar),
      el("span", { class: "probability", text: percent.toFixed(percent >= 10 ? 1 : 2) + "%" })
    );
  }

  /** Identifies a render's visualization. Two visualizations of one plugin
   *  (different settings) have different indices in the job's request. */
  function visualizationKey(render) {
    return typeof render.visualization === "number" ? "v" + render.visualization : "p" + render.plugin;
  }

  /** Finds the plugin stamp of a render: by request index, or by plugin id
   *  in manifests written before the index was recorded. */
  function stampOf(render, view) {
    if (typeof render.visualization === "number" && view.stamps[render.visualization]) return view.stamps[render.visualization];
    return view.plugins.get(render.plugin);
  }

  /** Describes a visualization's settings with the labels of the plugin's
   *  schema, in the schema's order, as "Label: value" pairs. */
  function describeSettings(stamp, view) {
    const plugin = pluginById(stamp.id);
    const schema = plugin ? plugin.settings : [];
    const values = stamp.settings || {};
    const names = schema.map((setting) => setting.name).filter((name) => Object.prototype.hasOwnProperty.call(values, name));
    for (const name of Object.keys(values)) if (!names.includes(name)) names.push(name);
    return names
      .map((name) => {
        const setting = schema.find((candidate) => candidate.name === name) || null;
        return (setting ? setting.label || name : name) + ": " + describeValue(setting, values[name], view);
      })
      .join(" \u00b7 ");
  }

  function describeValue(setting, value, view) {
    const kind = setting && setting.kind ? setting.kind.type : null;
    if (kind === "class") return value === null ? "top predicted" : describeClass(value, view);
    if (kind === "tensor") return value === null ? "plugin default" : String(value);
    if (value === null || value === undefined) return "default";
    if (typeof value === "boolean") return value ? "yes" : "no";
    // The schema has no way to mark a special value. The bundled plugins
    // document 0 as "automatic" in the help text, so the summary follows it.
    if (value === 0 && setting && /\b0: automatic\b/i.test(setting.help || "")) return "automatic";
    if (typeof value === "number") return formatNumber(value);
    return String(value);
  }

  /** Names a class index with its labels in the job's models, as far as the
   *  catalog still has those models. */
  function describeClass(index, view) {
    const labels = view.modelIds
      .map(modelById)
      .filter((model) => model && model.labels && index < model.labels.length)
      .map((model) => model.labels[index]);
    const distinct = Array.from(new Set(labels)).filter((label) => label !== String(index));
    return distinct.length > 0 ? index + " (" + distinct.join(" / ") + ")" : String(index);
  }

  /** Lays out one image's renders. With several models: one row per
   *  visualization and one column per model, so the maps of a method on
   *  different models sit side by side. With one model: the visualizations
   *  themselves side by side in a responsive grid. */
  function renderHeatmapGrid(image, view) {
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
    const wrap = el("div", { class: "heatmap-rows" + (view.singleModel ? " single-model" : "") });
    for (const key of order) {
      const first = firstRender.get(key);
      const plugin = stampOf(first, view);
      const row = el("section", { class: "heatmap-row" });
      const version = plugin ? " " + plugin.version : "";
      // With one model, the row has one render, whose time fits the heading.
      const duration = view.singleModel ? el("span", { class: "muted small duration", text: first.duration_ms + " ms" }) : null;
      row.append(
        el("h4", {}, el("span", { text: plugin ? plugin.title : first.plugin }), " ", el("code", { class: "muted small", text: first.plugin + version }), duration),
        plugin && plugin.settings && Object.keys(plugin.settings).length > 0 ? el("p", { class: "muted small settings-used", text: describeSettings(plugin, view) }) : null
      );
      const cells = el("div", { class: "heatmap-cells" });
      for (const model of image.models) {
        const render = model.renders.find((candidate) => visualizationKey(candidate) === key);
        if (!render) continue;
        cells.append(renderCell(image, model, render, plugin, view));
      }
      row.append(cells);
      wrap.append(row);
    }
    return wrap;
  }

  function renderCell(image, model, render, plugin, view) {
    const modelName = view.modelNames.get(model.model) || model.model;
    const cell = el("div", { class: "heatmap-cell" });
    // With one model, its name heads the predictions above the renders.
    if (!view.singleModel) cell.append(el("div", { class: "cell-head" }, el("strong", { text: modelName }), el("span", { class: "muted small", text: render.duration_ms + " ms" })));
    if (render.error) {
      cell.append(el("p", { class: "notice error", text: render.error }));
      return cell;
    }
    const context = { view: view, image: image.name, model: modelName, plugin: plugin ? plugin.title : render.plugin };
    for (const panel of render.panels) cell.append(renderPanel(panel, context));
    return cell;
  }

  function renderPanel(panel, context) {
    const jobId = context.view.jobId;
    if (panel.kind === "heatmap") return heatmapFigure(panel, context);
    if (panel.kind === "image") {
      return el("figure", { class: "panel" },
        el("img", { src: jobFileUrl(jobId, panel.png), alt: panel.title + " (" + context.plugin + ", " + context.model + ", " + context.image + ")" }),
        el("figcaption", { text: panel.title }),
        el("a", { href: jobFileUrl(jobId, panel.png), download: "", text: "PNG" })
      );
    }
    if (panel.kind === "scores") {
      const list = el("ol", { class: "top-classes" });
      for (const score of panel.scores || []) list.append(scoreItem(score));
      return el("figure", { class: "panel" }, el("figcaption", {}, el("span", { class: "panel-title", text: String(panel.title) })), list);
    }
    return el("p", { class: "muted", text: "Unknown panel kind " + JSON.stringify(panel.kind) });
  }

  /** Builds a heatmap's figure and registers it with the color scale
   *  control, which swaps its images, downloads and color bar numbers. */
  function heatmapFigure(panel, context) {
    const jobId = context.view.jobId;
    const label = panel.class_label || "";
    const titled = label !== "" && panel.title.includes(label);
    let classLine = null;
    if (label !== "" && !titled) {
      classLine = "Class: " + label;
      if (typeof panel.class_index === "number") classLine += " (" + panel.class_index + ")";
    }
    const subject = label !== "" ? " (class " + label + ")" : "";
    const alt = panel.title + subject + ": " + context.plugin + " heatmap of " + context.model + " over " + context.image;
    const scale = panel.scale === "diverging" ? "diverging" : "sequential";
    const image = el("img", { alt: alt });
    const link = el("a", { target: "_blank", rel: "noopener" }, image);
    const low = el("span");
    const high = el("span");
    const overlayDownload = el("a", { download: "", text: "Overlay PNG" });
    const coloredDownload = el("a", { download: "", text: "Heatmap PNG" });
    const legend = el(
      "div",
      { class: "colorbar" },
      el("img", { src: panel.colorbar ? jobFileUrl(jobId, panel.colorbar) : "/static/colorbar/" + scale + ".png", alt: scale === "diverging" ? "Color scale from blue (negative) through white (zero) to red (positive)" : "Color scale from dark purple (low) to yellow (high)" }),
      el("div", { class: "colorbar-labels" }, low, scale === "diverging" ? el("span", { text: "0" }) : null, high)
    );
    const shared = { min: panel.color_min, max: panel.color_max, overlay: panel.overlay, colored: panel.colored };
    // Manifests written before maps had their own range lack `own`.
    const own = panel.own ? { min: panel.own.color_min, max: panel.own.color_max, overlay: panel.own.overlay, colored: panel.own.colored } : shared;
    const apply = (mode) => {
      const range = mode === "own" ? own : shared;
      const overlay = jobFileUrl(jobId, range.overlay);
      image.src = overlay;
      link.href = overlay;
      overlayDownload.href = overlay;
      coloredDownload.href = jobFileUrl(jobId, range.colored);
      low.textContent = formatNumber(range.min);
      high.textContent = formatNumber(range.max);
    };
    apply("shared");
    context.view.heatmaps.push({ apply: apply, differs: own.min !== shared.min || own.max !== shared.max });
    return el(
      "figure",
      { class: "panel heatmap" },
      link,
      el(
        "figcaption",
        {},
        el("span", { class: "panel-title", text: panel.title }),
        classLine ? el("span", { class: "small", text: classLine }) : null,
        legend,
        el("span", { class: "muted small", text: panel.meaning }),
        el("span", { class: "muted small", text: "This map: " + formatNumber(panel.min) + " to " + formatNumber(panel.max) + ", " + panel.width + "\u00d7" + panel.height }),
        el("span", { class: "downloads" }, overlayDownload, coloredDownload, el("a", { href: jobFileUrl(jobId, panel.npy), download: "", text: "Raw .npy" }))
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
    const names = new Map(images.records.map((record) => [record.id, record.name]));
    table.tBodies[0].replaceChildren(...jobs.map((job) => jobRow(job, names)));
    show(table, jobs.length > 0);
    show($("jobs-empty"), jobs.length === 0);
  }

  /** Describes what a job runs in words: its images (by name where
   *  `imageNames` has them, since deleted uploads keep only their id), model
   *  names and visualization titles. */
  function jobParts(spec, imageNames) {
    const names = spec.images.map((id) => imageNames.get(id)).filter(Boolean);
    let imageText;
    if (names.length !== spec.images.length || names.length === 0) imageText = plural(spec.images.length, "image");
    else if (names.length <= 2) imageText = names.join(", ");
    else imageText = names[0] + " and " + (names.length - 1) + " more images";
    const models = spec.models.map((id) => (modelById(id) || { name: id }).name);
    const plugins = spec.visualizations.map((visualization) => (pluginById(visualization.plugin) || { title: visualization.plugin }).title);
    const pluginText = plugins.length <= 3 ? plugins.join(", ") : plugins.slice(0, 2).join(", ") + " and " + (plugins.length - 2) + " more visualizations";
    return { images: imageText, models: models.join(", "), visualizations: pluginText };
  }

  function jobRow(job, imageNames) {
    const fraction = job.progress_total > 0 ? job.progress_done / job.progress_total : 0;
    const parts = jobParts(job.spec, imageNames);
    const subject = parts.images + " \u00d7 " + parts.models + " \u00d7 " + parts.visualizations;
    const open = el("a", { href: "/jobs/" + encodeURIComponent(job.id), text: "Open", "aria-label": "Open job " + subject });
    const remove = el("button", {
      type: "button",
      class: "button small",
      text: "Delete",
      "aria-label": "Delete job " + subject,
      on: { click: () => deleteJob(job) },
    });
    const badge = el("span", { class: "state-badge" });
    setStateBadge(badge, job);
    const progress = isFinal(job.state) ? null : el("span", { class: "muted small", text: " " + Math.floor(fraction * 100) + "%" });
    let message = null;
    if (job.message) {
      let tone = "muted";
      if (completedWithErrors(job)) tone = "warn-text";
      else if (job.state === "failed" || job.state === "interrupted") tone = "error-text";
      message = el("div", { class: "small " + tone, text: job.message });
    }
    return el(
      "tr",
      {},
      el("td", { class: "created", text: formatTime(job.created_unix) }),
      el("td", { class: "state" }, badge, progress, message),
      el("td", { class: "runs", text: subject }),
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
    await refreshImages().catch((error) => showError($("upload-error"), error.message));
    await refreshJobs();
    updateRunSummary();
  }

  /** Maps the session's image ids to their names; empty when the list
   *  cannot be loaded, so the page falls back to counts. */
  async function sessionImageNames() {
    try {
      const body = await api("/api/images");
      return new Map((body.images || []).map((record) => [record.id, record.name]));
    } catch (error) {
      return new Map();
    }
  }

  /** Titles the job page with the job's images and visualizations. A
   *  manifest, once there, names even images deleted since. */
  function showJobHeading(job, imageNames, manifest) {
    const names = new Map(imageNames);
    if (manifest) for (const image of manifest.images) names.set(image.image, image.name);
    const parts = jobParts(job.spec, names);
    const title = parts.images + " \u2014 " + parts.visualizations;
    $("job-title").textContent = title;
    document.title = title + " \u00b7 Picasso";
    $("job-summary").textContent = "Created " + formatTime(job.created_unix) + " \u00b7 " + (job.spec.models.length === 1 ? "model " : "models ") + parts.models;
  }

  async function startJobPage() {
    const jobId = document.body.dataset.jobId;
    if (!$("job-status")) return;
    $("cancel-button").addEventListener("click", cancelActive);
    try {
      // The catalog gives model names, plugin titles and setting labels. The
      // results still render without it, with ids in their place.
      const [job, imageNames] = await Promise.all([
        api("/api/jobs/" + encodeURIComponent(jobId)),
        sessionImageNames(),
        loadCatalog().catch((error) => showError($("page-error"), "Failed to load models and visualizations: " + error.message)),
      ]);
      showJobHeading(job, imageNames, null);
      updateProgress(job);
      if (isFinal(job.state)) showJobHeading(job, imageNames, await showJobResults(job));
      else followJob(job, (finished, manifest) => showJobHeading(finished, imageNames, manifest));
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
