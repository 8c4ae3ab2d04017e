/* Quarterdeck console behaviour. Vanilla JS, no dependencies, loaded with `defer`.
 * CSP friendly: no inline handlers, no eval; every behaviour hangs off data-* attributes
 * and works for content swapped in later by htmx (event delegation + htmx:load).
 *
 *   .toast[data-timeout-ms="7000"]     removed from the page after exactly that many ms
 *   [data-confirm-dialog="ID"]          click opens <dialog id="ID"> with showModal()
 *   [data-close-dialog]                 click closes the enclosing <dialog>
 *   [data-copy="ID"]                    copies #ID's text; the button says "Copied" for 2 s
 *   .kv-rows [data-add-row]             appends a clone of the <template> inside .kv-rows
 *   [data-remove-row]                   removes its .kv-row
 *   input[data-slug-source]             fills input[data-slug-target] (same form, or the
 *                                       element whose id is the attribute's value) with a
 *                                       DNS-label slug until the slug is edited by hand
 *   input[data-type-to-confirm="X"]     keeps the form's submit button(s) disabled until
 *                                       the input's value equals X
 */
(function () {
  "use strict";

  function all(root, selector) {
    var found = Array.prototype.slice.call(root.querySelectorAll(selector));
    if (root.matches && root.matches(selector)) found.unshift(root);
    return found;
  }

  /* ---------- toasts ---------- */
  function armToasts(root) {
    all(root, ".toast[data-timeout-ms]").forEach(function (toast) {
      if (toast.hasAttribute("data-toast-armed")) return;
      toast.setAttribute("data-toast-armed", "");
      var ms = parseInt(toast.getAttribute("data-timeout-ms"), 10);
      if (!isFinite(ms) || ms < 0) return;
      window.setTimeout(function () { toast.remove(); }, ms);
    });
  }

  /* ---------- slugs ---------- */
  function slugify(value) {
    var s = String(value || "").normalize("NFKD").replace(/[\u0300-\u036f]/g, "").toLowerCase();
    s = s.replace(/[^a-z0-9]+/g, "-").replace(/-+/g, "-").replace(/^-+|-+$/g, "");
    return s.slice(0, 63).replace(/-+$/g, "");
  }

  function slugTargetFor(source) {
    var ref = source.getAttribute("data-slug-source");
    if (ref) {
      var byId = document.getElementById(ref);
      if (byId) return byId;
    }
    var scope = source.form || source.closest("form") || document;
    return scope.querySelector("input[data-slug-target]");
  }

  function armSlugs(root) {
    all(root, "input[data-slug-source]").forEach(function (source) {
      var target = slugTargetFor(source);
      if (!target || target.hasAttribute("data-slug-armed")) return;
      target.setAttribute("data-slug-armed", "");
      // A slug that is already filled in and does not follow the name (for example after a
      // failed submit) counts as hand-edited and is left alone.
      if (target.value !== "" && target.value !== slugify(source.value)) {
        target.setAttribute("data-slug-edited", "");
      }
    });
  }

  /* ---------- type to confirm ---------- */
  function submitButtons(form) {
    return all(form, 'button[type="submit"], button:not([type]), input[type="submit"]').concat(
      form.id ? Array.prototype.slice.call(document.querySelectorAll('[form="' + CSS.escape(form.id) + '"][type="submit"]')) : []
    );
  }

  function updateTypeToConfirm(form) {
    var inputs = all(form, "input[data-type-to-confirm]");
    if (inputs.length === 0) return;
    var ok = inputs.every(function (input) {
      return input.value === input.getAttribute("data-type-to-confirm");
    });
    submitButtons(form).forEach(function (button) { button.disabled = !ok; });
  }

  function armTypeToConfirm(root) {
    var forms = [];
    all(root, "input[data-type-to-confirm]").forEach(function (input) {
      var form = input.form || input.closest("form");
      if (form && forms.indexOf(form) === -1) forms.push(form);
    });
    forms.forEach(updateTypeToConfirm);
  }

  /* ---------- copy to clipboard ---------- */
  var copyLabels = new WeakMap();
  var copyTimers = new WeakMap();

  function copyWithSelection(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.top = "0";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    area.remove();
    return ok ? Promise.resolve() : Promise.reject(new Error("copy failed"));
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () { return copyWithSelection(text); });
    }
    return copyWithSelection(text);
  }

  function flashLabel(button, label) {
    if (!copyLabels.has(button)) copyLabels.set(button, button.innerHTML);
    window.clearTimeout(copyTimers.get(button));
    button.textContent = label;
    copyTimers.set(button, window.setTimeout(function () {
      button.innerHTML = copyLabels.get(button);
      copyLabels.delete(button);
    }, 2000));
  }

  function onCopy(button) {
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) return;
    var text = "value" in source && (source.tagName === "INPUT" || source.tagName === "TEXTAREA")
      ? source.value
      : source.textContent.trim();
    copyText(text).then(
      function () { flashLabel(button, "Copied"); },
      function () { flashLabel(button, "Copy failed"); }
    );
  }

  /* ---------- key/value rows ---------- */
  var rowCounter = 0;

  function addRow(button) {
    var container = button.closest(".kv-rows");
    if (!container) return;
    var template = container.querySelector("template");
    if (!template) return;
    rowCounter += 1;
    var index = "n" + Date.now().toString(36) + rowCounter;
    var fragment = template.content.cloneNode(true);
    all(fragment, "[name], [id], [for]").forEach(function (el) {
      ["name", "id", "for"].forEach(function (attr) {
        var v = el.getAttribute(attr);
        if (v && v.indexOf("__INDEX__") !== -1) el.setAttribute(attr, v.split("__INDEX__").join(index));
      });
    });
    var newRow = fragment.firstElementChild;
    var rows = container.querySelectorAll(".kv-row");
    if (rows.length > 0) {
      var last = rows[rows.length - 1];
      last.parentNode.insertBefore(fragment, last.nextSibling);
    } else {
      var anchor = button;
      while (anchor.parentNode && anchor.parentNode !== container) anchor = anchor.parentNode;
      container.insertBefore(fragment, anchor.parentNode === container ? anchor : template);
    }
    if (newRow) {
      var first = newRow.querySelector("input, select, textarea");
      if (first) first.focus();
      armAll(newRow);
    }
  }

  function removeRow(button) {
    var row = button.closest(".kv-row") || button.parentElement;
    var container = row && row.closest(".kv-rows");
    if (!row) return;
    row.remove();
    if (container) {
      var next = container.querySelector(".kv-row input, [data-add-row]");
      if (next) next.focus();
    }
  }

  /* ---------- dialogs ---------- */
  function openDialog(trigger) {
    var dialog = document.getElementById(trigger.getAttribute("data-confirm-dialog"));
    if (!dialog || typeof dialog.showModal !== "function" || dialog.open) return;
    dialog.showModal();
  }

  function resetDialog(dialog) {
    all(dialog, "input[data-type-to-confirm]").forEach(function (input) { input.value = ""; });
    armTypeToConfirm(dialog);
  }

  /* ---------- wiring ---------- */
  function armAll(root) {
    armToasts(root);
    armSlugs(root);
    armTypeToConfirm(root);
  }

  document.addEventListener("click", function (event) {
    var target = event.target instanceof Element ? event.target : null;
    if (!target) return;
    var el;
    if ((el = target.closest("[data-confirm-dialog]"))) {
      event.preventDefault();
      openDialog(el);
    } else if ((el = target.closest("[data-close-dialog]"))) {
      event.preventDefault();
      var dialog = el.closest("dialog");
      if (dialog) dialog.close();
    } else if ((el = target.closest("[data-copy]"))) {
      event.preventDefault();
      onCopy(el);
    } else if ((el = target.closest(".kv-rows [data-add-row]"))) {
      event.preventDefault();
      addRow(el);
    } else if ((el = target.closest("[data-remove-row]"))) {
      event.preventDefault();
      removeRow(el);
    } else if (target.matches("dialog.modal") && target.open) {
      // A click on the backdrop (outside the dialog box) closes it.
      var r = target.getBoundingClientRect();
      if (event.clientX < r.left || event.clientX > r.right || event.clientY < r.top || event.clientY > r.bottom) {
        target.close();
      }
    }
  });

  document.addEventListener("input", function (event) {
    var input = event.target;
    if (!(input instanceof HTMLInputElement)) return;
    if (input.hasAttribute("data-slug-source")) {
      var target = slugTargetFor(input);
      if (target && !target.hasAttribute("data-slug-edited")) target.value = slugify(input.value);
    }
    if (input.hasAttribute("data-slug-target")) {
      // Typing in the slug field stops auto-fill; clearing it starts it again.
      if (input.value === "") input.removeAttribute("data-slug-edited");
      else input.setAttribute("data-slug-edited", "");
    }
    if (input.hasAttribute("data-type-to-confirm")) {
      var form = input.form || input.closest("form");
      if (form) updateTypeToConfirm(form);
    }
  });

  // "close" does not bubble; listen in the capture phase.
  document.addEventListener("close", function (event) {
    if (event.target instanceof HTMLDialogElement) resetDialog(event.target);
  }, true);

  document.addEventListener("htmx:load", function (event) {
    if (event.target instanceof Element) armAll(event.target);
  });

  // Exposed for tests and for other scripts; not needed by templates.
  window.Quarterdeck = { slugify: slugify };

  // Coming back through the history cache can restore typed values; re-check the buttons.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) armTypeToConfirm(document.body);
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { armAll(document.body); });
  } else {
    armAll(document.body);
  }
})();
