// The console's few behaviours. htmx (vendored, static/htmx.min.js) does the requests.
document.addEventListener("DOMContentLoaded", function () {
  var csrf = document.body.getAttribute("data-csrf");
  document.body.addEventListener("htmx:configRequest", function (evt) {
    if (csrf) { evt.detail.headers["X-CSRF-Token"] = csrf; }
  });
  document.body.addEventListener("htmx:xhr:progress", function (evt) {
    var bar = document.getElementById("upload-progress");
    if (bar && evt.detail.lengthComputable) {
      bar.value = Math.round(evt.detail.loaded * 100 / evt.detail.total);
      bar.textContent = bar.value + "%";
    }
  });
});
