// The new-run page: choosing another recipe shows that recipe's settings at once (without
// JavaScript, the "Show this recipe's settings" button does the same).
const choice = document.querySelector("[data-testid=recipe-choice]");
if (choice) {
  const select = choice.querySelector("select");
  choice.querySelector("[data-recipe-switch]").hidden = true;
  select.addEventListener("change", () => choice.requestSubmit());
}
