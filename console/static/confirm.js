// Confirmation before a destructive action: a form (or its submit button) carrying
// data-confirm="..." asks that question first, and is not sent unless the user agrees.
// One listener for the whole document, in the capture phase so it runs before any other
// submit handler; the page's own scripts see the submit only once it is confirmed.
// The question is text the console composed in the template (never sandbox output).
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement)) { return; }
    var button = event.submitter;
    var question = (button && button.getAttribute("data-confirm")) ||
      form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);
}());
