// Saved filters for the audit log: kept per user in this browser's localStorage (never sent
// to the server); each is a name and the list's query string. Built with textContent only.
(function () {
  "use strict";
  const form = document.getElementById("filters");
  const list = document.getElementById("saved-filter-list");
  if (!form || !list) return;
  const key = "sealroom.audit.filters." + form.dataset.user;
  const empty = document.getElementById("saved-filter-empty");
  const nameInput = document.getElementById("saved-filter-name");

  function load() {
    try {
      const saved = JSON.parse(window.localStorage.getItem(key) || "[]");
      return Array.isArray(saved) ? saved.filter((f) => f && typeof f.name === "string" &&
                                                 typeof f.query === "string") : [];
    } catch (e) {
      return [];
    }
  }

  function store(saved) {
    window.localStorage.setItem(key, JSON.stringify(saved));
  }

  function currentQuery() {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (typeof value === "string" && value.trim() !== "") params.append(name, value.trim());
    }
    return params.toString();
  }

  function render() {
    const saved = load();
    list.replaceChildren();
    for (const [index, filter] of saved.entries()) {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = window.location.pathname + (filter.query ? "?" + filter.query : "");
      link.textContent = filter.name;
      link.className = "saved-filter";
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "link forget-filter";
      remove.textContent = "forget";
      remove.setAttribute("aria-label", "Forget the saved filter " + filter.name);
      remove.addEventListener("click", () => {
        const now = load();
        now.splice(index, 1);
        store(now);
        render();
      });
      item.append(link, " ", remove);
      list.append(item);
    }
    empty.hidden = saved.length > 0;
  }

  document.getElementById("save-filter").addEventListener("click", () => {
    const query = currentQuery();
    const name = nameInput.value.trim() || query.replace(/&/g, ", ") || "everything";
    const saved = load().filter((f) => f.name !== name);
    saved.push({name: name.slice(0, 60), query: query});
    store(saved);
    nameInput.value = "";
    render();
  });
  render();
})();
