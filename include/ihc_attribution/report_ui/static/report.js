// Links marked data-airflow-page open a page of the Airflow UI. The UI shows the report in a
// sandboxed frame that may not navigate the top window, so the link's target is handed to the
// UI's router instead (same origin). Without script the plain link still works, inside the frame.
document.addEventListener("click", function (event) {
  var link = event.target.closest && event.target.closest("a[data-airflow-page]");
  if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  try {
    var top = window.parent;
    if (top === window) return;
    var url = new URL(link.href);
    if (url.origin !== top.location.origin) return;
    var idx = (top.history.state && typeof top.history.state.idx === "number") ? top.history.state.idx + 1 : 0;
    top.history.pushState({usr: null, key: Math.random().toString(36).slice(2, 10), idx: idx}, "",
                          url.pathname + url.search + url.hash);
    top.dispatchEvent(new PopStateEvent("popstate", {state: top.history.state}));
    event.preventDefault();
  } catch (error) { /* the plain link still works */ }
});
