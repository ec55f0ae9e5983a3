// cedard console: the little the pages need from script. Everything works
// without it; it only fills the Impact form from an uploaded file.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const upload = document.getElementById("upload");
  const text = document.getElementById("text");
  const file = document.getElementById("file");
  if (upload && text && file) {
    upload.addEventListener("change", () => {
      const chosen = upload.files && upload.files[0];
      if (!chosen) {
        return;
      }
      const reader = new FileReader();
      reader.addEventListener("load", () => {
        text.value = String(reader.result);
        if (!file.value) {
          file.value = chosen.name;
        }
      });
      reader.readAsText(chosen);
    });
  }
});
