// The terminal session page: replays the session's recording (asciicast v2) in the vendored
// asciinema-player. The recording's URL comes from the page; nothing here is inline.
(function () {
  "use strict";
  const el = document.getElementById("player");
  if (!el || !window.AsciinemaPlayer) return;
  window.AsciinemaPlayer.create(el.dataset.src, el, {
    preload: true,
    fit: "width",
    idleTimeLimit: 2,
    controls: true,
  });
})();
